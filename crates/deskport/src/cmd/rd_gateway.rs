//! `deskport rd-gateway`: the RD Gateway on its own host. Flags become the `[rd_gateway]`
//! settings layer (`config::rd_gateway`); the gateway is `deskport_gateway::RdGateway`, its
//! authority the manager, asked over its API (`/api/v1/rd-gateway/…`) with an administrator's
//! token: a token's grant when a tunnel opens, a live tunnel's grant again whenever the
//! manager's count of access changes moves (long poll), and every event for the audit log.
//! While no manager answers, new tunnels are refused and live ones kept (as agents keep the
//! last policy they know).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::response::IntoResponse as _;
use deskport_api::v1::GatewayOpen;
use deskport_api::{Client, ClientError};
use deskport_gateway::{Authorizer, Event, Grant, RdGateway, Refusal, RefusalKind};
use deskport_manager::gateway::{event_to_wire, grant_from_wire, refusal_from_wire};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::rd_gateway::{RdGatewayConfig, RdGatewaySettings};

/// Flags that are settings are serialized as the `[rd_gateway]` layer of the configuration.
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// The HTTPS address clients reach (default 0.0.0.0:443).
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The manager that checks tokens (e.g. https://10.0.0.2:8080); several replicas
    /// separated by commas are asked in turn (the next when one stops answering).
    #[arg(long, value_name = "URL[,URL...]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<String>,
    /// Trust an https:// manager only with this certificate (`SHA256:ab:cd:…`, as
    /// `deskport manager` prints it).
    #[arg(long, value_name = "SHA256:FP", conflicts_with = "manager_ca_file")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_fingerprint: Option<String>,
    /// Trust an https:// manager whose certificate this CA (PEM file) signed for its host.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_ca_file: Option<PathBuf>,
    /// An administrator's API token (the gateway acts for the manager: only administrators
    /// may).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Where the self-signed certificate is kept (`tls/`); default
    /// ~/.local/share/deskport/rd-gateway.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Serve this certificate chain (PEM) instead of a self-signed one (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Tunnels at once (open or being set up); more get HTTP 503.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tunnels: Option<usize>,
}

pub fn exec(settings: &RdGatewaySettings) -> anyhow::Result<()> {
    let config = settings.config()?;
    crate::runtime::block_on(run(config))
}

async fn run(config: RdGatewayConfig) -> anyhow::Result<()> {
    let identity = deskport_manager::TlsIdentity::for_role(
        &config.tls,
        &config.data_dir,
        "deskport RD Gateway",
    )?
    .context("the RD Gateway serves HTTPS only")?;
    let clients = config
        .managers
        .iter()
        .map(|url| Client::with_trust(url, Some(config.token.clone()), config.trust.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let authority = Arc::new(RemoteAuthorizer {
        clients,
        current: AtomicUsize::new(0),
        changes: watch::channel(0).0,
    });
    let follower = tokio::spawn(authority.clone().follow());
    let gateway = RdGateway::new(authority.clone(), config.limits);
    let metrics_of = gateway.clone();
    let app: axum::Router = gateway
        .routes()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = deskport_manager::metrics::render_gateway(&metrics_of.stats());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr().context("the listener's address")?;
    println!(
        "deskport RD Gateway on https://{addr}{}\n  certificate:  SHA256:{} ({})\n  manager:      {}",
        deskport_gateway::PATH,
        identity.fingerprint,
        identity.cert_path.display(),
        config.managers.join(", ")
    );
    tracing::info!(%addr, managers = ?config.managers, "RD Gateway started");
    let served =
        deskport_manager::serve_tls(listener, app, &identity, crate::runtime::shutdown_signal())
            .await;
    follower.abort();
    served?;
    tracing::info!("RD Gateway stopped");
    Ok(())
}

/// The manager as the gateway's authority, over its API.
#[derive(Debug)]
struct RemoteAuthorizer {
    clients: Vec<Client>,
    /// The replica asked first (the last that answered).
    current: AtomicUsize,
    changes: watch::Sender<u64>,
}

/// Whether the replica did not answer (the next is asked), rather than answered no.
fn unanswered(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. } | ClientError::Tls { .. })
        || matches!(e, ClientError::Api { status, .. } if *status >= 500)
}

impl RemoteAuthorizer {
    /// `ask` of the replicas in turn, from the last that answered.
    async fn ask<T, F, Fut>(&self, ask: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.clients.len() {
            let at = (first + i) % self.clients.len();
            match ask(self.clients[at].clone()).await {
                Err(e) if unanswered(&e) => {
                    tracing::warn!(manager = self.clients[at].base(), error = %e, "RD Gateway: a manager does not answer");
                    last = Some(e);
                }
                answer => {
                    self.current.store(at, Ordering::Relaxed);
                    return answer;
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Decode("no manager configured".into())))
    }

    /// Follows the manager's count of access changes; any change (or a reconnection, after
    /// which changes may have been missed) tells the live tunnels to ask again.
    async fn follow(self: Arc<Self>) {
        let mut last: Option<u64> = None;
        let mut wait = Duration::from_secs(1);
        loop {
            let answer = self
                .ask(|c| async move { c.gateway_changes(last, Duration::from_secs(25)).await })
                .await;
            match answer {
                Ok(seen) => {
                    wait = Duration::from_secs(1);
                    if last != Some(seen.changes) {
                        if last.is_some() || seen.changes > 0 {
                            self.changes.send_modify(|n| *n += 1);
                        }
                        last = Some(seen.changes);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RD Gateway: cannot follow the manager's changes; retrying");
                    last = None;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Authorizer for RemoteAuthorizer {
    async fn open(&self, cookie: &str, peer: SocketAddr) -> Result<Grant, Refusal> {
        let request = GatewayOpen {
            token: cookie.to_owned(),
            peer: peer.to_string(),
        };
        match self
            .ask(|c| {
                let request = &request;
                async move { c.gateway_open(request).await }
            })
            .await
        {
            Ok(decision) => match (decision.grant, decision.refusal) {
                (Some(grant), _) => grant_from_wire(&grant).map_err(|e| {
                    Refusal::new(
                        RefusalKind::Unavailable,
                        format!("the manager's grant: {e}"),
                    )
                }),
                (None, Some(refusal)) => Err(refusal_from_wire(&refusal)),
                (None, None) => Err(Refusal::new(
                    RefusalKind::Unavailable,
                    "the manager answered neither a grant nor a refusal",
                )),
            },
            Err(e) => {
                tracing::warn!(%peer, error = %e, "RD Gateway: no manager can check a token; refused");
                Err(Refusal::new(
                    RefusalKind::Unavailable,
                    format!("no manager can check the token: {e}"),
                ))
            }
        }
    }

    async fn recheck(&self, grant: &Grant) -> Result<(), Refusal> {
        match self
            .ask(|c| async move { c.gateway_check(grant.token_id).await })
            .await
        {
            Ok(decision) => match decision.refusal {
                Some(refusal) => Err(refusal_from_wire(&refusal)),
                None => Ok(()),
            },
            // No manager answers: the tunnel stays (the next change asks again).
            Err(e) => {
                tracing::warn!(error = %e, "RD Gateway: cannot recheck a live tunnel; it stays");
                Ok(())
            }
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn record(&self, peer: SocketAddr, grant: Option<&Grant>, event: Event) {
        let report = event_to_wire(peer, grant, &event);
        if let Err(e) = self
            .ask(|c| {
                let report = &report;
                async move { c.gateway_event(report).await }
            })
            .await
        {
            tracing::warn!(%peer, ?event, error = %e, "RD Gateway: cannot record an event in the manager's audit log");
        }
    }
}
