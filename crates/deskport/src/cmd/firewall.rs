//! `deskport firewall`: the enforcement agent, with the nftables or the gateway backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deskport_firewall::agent::{self, AgentStats, Backend, Source};
use deskport_firewall::{Gateway, GatewayConfig, NftBackend, NftConfig};
use deskport_policy::nft::{Deny, Options, Placement};
use serde::{Deserialize, Serialize};

use crate::cli::UsageError;

/// `[firewall]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSettings {
    /// `gateway` (userspace, no privileges) or `nft` (nftables, needs CAP_NET_ADMIN).
    pub backend: BackendKind,
    /// The policy document to enforce (TOML, or JSON when the name ends in `.json`).
    pub policy: Option<PathBuf>,
    /// Take the policy from this manager's agent feed instead (with `token`).
    pub manager: Option<String>,
    /// The instance's agent token (or a user's API token for a whole project).
    pub token: Option<String>,
    /// Where the last policy from the manager is kept (default in the data directory).
    pub state: Option<PathBuf>,
    /// nft: `forward` (a gateway in front of the instances) or `host` (on the instance).
    pub placement: PlacementKind,
    /// nft with `placement = "host"` on a machine whose addresses other services share: only
    /// connections to these ports are the instance's and judged by its groups (loopback
    /// included); empty: the whole host is the instance.
    pub host_ports: Vec<u16>,
    /// nft: the table name in the `inet` family.
    pub table: String,
    /// nft: `reject` (reset / ICMP prohibited) or `drop` for denied new connections.
    pub deny: DenyKind,
    /// nft: log denied new connections (rate-limited) to the kernel log.
    pub log_denied: bool,
    /// Close live connections that a policy change no longer allows.
    pub cut_revoked: bool,
    /// How often the policy file is checked for changes, in milliseconds.
    pub poll_interval_ms: u64,
    /// gateway: live connections and flows at most.
    pub max_connections: usize,
    /// gateway: close a TCP connection idle for this many seconds.
    pub idle_timeout_secs: u64,
    /// gateway: forget a UDP flow idle for this many seconds.
    pub udp_idle_timeout_secs: u64,
    /// Serve `/metrics` and `/healthz` on this address.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for FirewallSettings {
    fn default() -> Self {
        let gateway = GatewayConfig::default();
        Self {
            backend: BackendKind::Gateway,
            policy: None,
            manager: None,
            token: None,
            state: None,
            placement: PlacementKind::Forward,
            host_ports: Vec::new(),
            table: "deskport".to_owned(),
            deny: DenyKind::Reject,
            log_denied: false,
            cut_revoked: true,
            poll_interval_ms: 100,
            max_connections: gateway.max_connections,
            idle_timeout_secs: gateway.idle_timeout.as_secs(),
            udp_idle_timeout_secs: gateway.udp_idle_timeout.as_secs(),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Userspace TCP/UDP gateway: publishes each instance's services and decides every new
    /// connection; needs no privileges.
    Gateway,
    /// nftables: one `inet` table applied atomically; needs CAP_NET_ADMIN.
    Nft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    /// The forward path of a gateway in front of the instances.
    Forward,
    /// The instance's own input/output paths.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DenyKind {
    /// TCP reset or ICMP administratively prohibited: clients fail at once.
    Reject,
    /// Silently drop: clients time out.
    Drop,
}

/// The agent reads a policy document (security groups and the instances they protect), applies
/// it with the chosen backend, and re-applies it whenever the file changes. A file that cannot
/// be read or parsed changes nothing: the previous policy stays in force. With the nft backend
/// the ruleset stays in the kernel after the agent stops (fail closed).
///
/// Flags that are settings are serialized as the `[firewall]` layer of the configuration.
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// Enforcement backend.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<BackendKind>,
    /// Policy document (TOML, or JSON for *.json).
    #[arg(long, value_name = "FILE", conflicts_with = "manager")]
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    /// Follow this manager's agent feed (e.g. http://127.0.0.1:8080) instead of a file.
    #[arg(long, value_name = "URL", requires = "token")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<String>,
    /// The agent token of the instance (printed by `deskport instance create`).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Where the last policy received from the manager is kept.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<PathBuf>,
    /// nft: where the table hooks in.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<PlacementKind>,
    /// nft: table name in the inet family.
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    /// nft: what happens to denied new connections.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    deny: Option<DenyKind>,
    /// nft: log denied connections (rate-limited).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    log_denied: bool,
    /// Keep live connections when a rule that allowed them is removed.
    #[arg(long)]
    #[serde(
        rename = "cut_revoked",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "as_false"
    )]
    no_cut_revoked: bool,
    /// Milliseconds between checks of the policy file.
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
    /// gateway: most live connections and flows.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// gateway: close TCP connections idle for this many seconds.
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_secs: Option<u64>,
    /// Serve /metrics and /healthz on ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Validate the policy (and, for nft, ask the kernel with `nft --check`), change nothing.
    #[arg(long)]
    #[serde(skip)]
    dry_run: bool,
    /// nft: print the generated ruleset and exit.
    #[arg(long)]
    #[serde(skip)]
    print: bool,
    /// nft: apply once and exit instead of watching the file.
    #[arg(long)]
    #[serde(skip)]
    once: bool,
}

fn as_false<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(false)
}

pub fn exec(args: Args, settings: &FirewallSettings) -> anyhow::Result<()> {
    let source = match (&settings.manager, &settings.policy) {
        (Some(url), _) => {
            let Some(token) = settings.token.clone() else {
                return Err(UsageError(
                    "--manager needs --token (the instance's agent token)".to_owned(),
                )
                .into());
            };
            let client =
                deskport_api::Client::new(url, Some(token)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let state = match &settings.state {
                Some(p) => p.clone(),
                None => crate::cmd::manager::default_data_dir()?.join("firewall-policy.json"),
            };
            Source::Manager { client, state }
        }
        (None, Some(path)) => Source::File(path.clone()),
        (None, None) => {
            return Err(UsageError(
                "no policy to enforce: give --policy FILE or --manager URL --token T".to_owned(),
            )
            .into())
        }
    };
    if (args.print || args.once || args.dry_run) && !matches!(source, Source::File(_)) {
        return Err(
            UsageError("--print, --once and --dry-run read a --policy file".to_owned()).into(),
        );
    }
    if !settings.host_ports.is_empty()
        && (settings.backend != BackendKind::Nft || settings.placement != PlacementKind::Host)
    {
        return Err(UsageError(
            "[firewall] host_ports is for backend = \"nft\" with placement = \"host\"".to_owned(),
        )
        .into());
    }
    if settings.host_ports.contains(&0) {
        return Err(UsageError("[firewall] host_ports: 0 is not a port".to_owned()).into());
    }
    if (args.print || args.once) && settings.backend != BackendKind::Nft {
        return Err(UsageError("--print and --once are for --backend nft".to_owned()).into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run(args, settings, source))
}

fn nft_backend(settings: &FirewallSettings) -> NftBackend {
    NftBackend::new(NftConfig {
        options: Options {
            table: settings.table.clone(),
            placement: match settings.placement {
                PlacementKind::Forward => Placement::Forward,
                PlacementKind::Host => Placement::Host,
            },
            log_prefix: settings.log_denied.then(|| "deskport ".to_owned()),
            deny: match settings.deny {
                DenyKind::Reject => Deny::Reject,
                DenyKind::Drop => Deny::Drop,
            },
            only_ports: settings.host_ports.clone(),
            ..Options::default()
        },
        cut_revoked: settings.cut_revoked,
        ..NftConfig::default()
    })
}

async fn run(args: Args, settings: &FirewallSettings, source: Source) -> anyhow::Result<()> {
    let nft = nft_backend(settings);

    if let (true, Source::File(policy_path)) = (args.print || args.dry_run, &source) {
        let loaded = agent::load_file(policy_path)?;
        let rules: usize = loaded.policy.groups.iter().map(|g| g.rules.len()).sum();
        if args.print {
            print!("{}", nft.ruleset(&loaded.policy, loaded.revision));
        }
        if args.dry_run {
            if settings.backend == BackendKind::Nft {
                nft.check(&nft.ruleset(&loaded.policy, loaded.revision))
                    .await?;
            }
            eprintln!(
                "policy {} is valid: revision {}, {} groups, {rules} rules, {} instances{}",
                policy_path.display(),
                loaded.revision,
                loaded.policy.groups.len(),
                loaded.policy.members.len(),
                if settings.backend == BackendKind::Nft {
                    "; nft accepts the ruleset"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }

    if let (true, Source::File(policy_path)) = (args.once, &source) {
        let loaded = agent::load_file(policy_path)?;
        backend(settings).apply(&loaded).await?;
        return Ok(());
    }
    run_agent(settings, source).await
}

fn backend(settings: &FirewallSettings) -> Backend {
    match settings.backend {
        BackendKind::Nft => Backend::Nft(nft_backend(settings)),
        BackendKind::Gateway => Backend::Gateway(Gateway::new(GatewayConfig {
            max_connections: settings.max_connections,
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs.max(1)),
            udp_idle_timeout: Duration::from_secs(settings.udp_idle_timeout_secs.max(1)),
            cut_revoked: settings.cut_revoked,
            ..GatewayConfig::default()
        })),
    }
}

/// Runs the agent until SIGINT/SIGTERM: applies `source`'s policy with the configured backend
/// and follows its changes.
pub async fn run_agent(settings: &FirewallSettings, source: Source) -> anyhow::Result<()> {
    let backend = backend(settings);
    let stats = Arc::new(AgentStats::default());
    if let Some(addr) = settings.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr}"))?;
        let stats = stats.clone();
        let gateway = match &backend {
            Backend::Gateway(g) => Some(g.clone()),
            Backend::Nft(_) => None,
        };
        let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
            let mut text = stats.metrics();
            if let Some(g) = &gateway {
                text += &g.metrics();
            }
            text
        });
        tracing::info!(%addr, "Serving /metrics and /healthz");
        tokio::spawn(deskport_firewall::http::serve_metrics(listener, metrics));
    }

    let from = match &source {
        Source::File(p) => p.display().to_string(),
        Source::Manager { client, .. } => client.base().to_owned(),
    };
    tracing::info!(backend = ?settings.backend, source = %from, "Firewall agent started");
    agent::run(
        source,
        backend.clone(),
        Duration::from_millis(settings.poll_interval_ms.max(10)),
        &stats,
        shutdown_signal(),
    )
    .await?;
    if let Backend::Gateway(g) = &backend {
        g.shutdown().await;
    }
    tracing::info!("Firewall agent stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
