//! The RDP server as a service: [`RdpServer::open`] makes or loads the certificate, opens the
//! account store and the desktops; [`RdpServer::run`] serves connections until shutdown,
//! following the article's two switches from the caller (a configuration that is re-read) or
//! from the manager's agent feed (`deskport_api::Feed`, which also learns the certificate's
//! fingerprint).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deskport_api::v1::AgentReport;
use deskport_api::Feed;
use deskport_policy::throttle::Throttle;
use tokio::sync::watch;

use crate::accounts::Accounts;
use crate::connection::Shared;
use crate::server::{ServerConfig, Switches};
use crate::{AccountStore, Codec};
use deskport_desktop::sessions::{SessionConfig, VirtualSessions};
use deskport_desktop::x11::{Capture, X11Desktop};
use deskport_desktop::{Desktop as _, DesktopProvider, Shadow};

/// What the server shows.
#[derive(Debug, Clone)]
pub enum Desktops {
    /// Every logon sees and drives this existing X display.
    Shadow {
        display: String,
        capture: Capture,
        capture_shm: bool,
    },
    /// Every account gets a virtual desktop of its own.
    Virtual(SessionConfig),
}

/// Where the two switches come from.
#[derive(Debug)]
pub enum SwitchSource {
    /// The caller's (fixed, or changed by re-reading a configuration).
    Watch(watch::Receiver<Switches>),
    /// The manager's agent feed for this instance (`urls`: one or more replicas), with the
    /// instance's agent token; the certificate's fingerprint is reported to it. `initial`
    /// holds until the manager first answers.
    Manager {
        urls: Vec<String>,
        token: String,
        initial: Switches,
        /// How `https://` managers are checked.
        trust: Option<deskport_api::ServerTrust>,
    },
}

/// Logon throttling: `failures` within `window` lock the user or address out for `lockout`,
/// doubling with each further lockout up to 16 times.
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    pub failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

/// Everything the server needs.
#[derive(Debug)]
pub struct RdpServerConfig {
    pub listen: SocketAddr,
    /// Holds the account store (`accounts.json`) and the certificate (`tls/`).
    pub data_dir: PathBuf,
    pub desktops: Desktops,
    pub switches: SwitchSource,
    pub max_connections: usize,
    /// What one address may have of the connections.
    pub per_source: crate::admit::SourceLimits,
    pub handshake_timeout: Duration,
    /// A client must have logged on within this (at most `handshake_timeout`).
    pub logon_timeout: Duration,
    pub frame_interval: Duration,
    pub codec: Codec,
    pub bulk_compression: bool,
    pub lockout: Lockout,
    /// Offer the sessions' sound (`rdpsnd`) in this coding; `None`: no sound.
    pub sound: Option<crate::channels::sound::SoundCodec>,
    /// Mount the client's drives in the sessions (`rdpdr`), each request to the client
    /// answered within this time (else the session's program gets EIO); `None`: no drives.
    pub drives: Option<Duration>,
}

/// The RDP server, ready to serve.
#[derive(Debug)]
pub struct RdpServer {
    listen: SocketAddr,
    max_connections: usize,
    per_source: crate::admit::SourceLimits,
    shared: Arc<Shared>,
    switches: SwitchSource,
    fingerprint: String,
    bound: watch::Sender<Option<SocketAddr>>,
}

impl RdpServer {
    /// Makes (first start) or loads the certificate, opens the account store and the desktops.
    pub fn open(config: RdpServerConfig) -> anyhow::Result<Self> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tls = crate::tls::load_or_create(&dir.join("tls"))?;
        let accounts = AccountStore::open(&Accounts::path(dir))?;
        if accounts.current().is_empty() {
            tracing::warn!(
                "There are no accounts yet: add one with 'deskport rdp-server user add NAME'"
            );
        }
        let desktops: Arc<dyn DesktopProvider> = match config.desktops {
            Desktops::Shadow {
                display: x_display,
                capture,
                capture_shm,
            } => {
                let desktop = X11Desktop::connect_with(&x_display, capture, capture_shm)?;
                tracing::info!(x_display, size = ?desktop.size(), "Sharing the X display");
                Arc::new(Shadow {
                    desktop: Arc::new(desktop),
                })
            }
            Desktops::Virtual(sessions) => {
                tracing::info!(commands = ?sessions.commands, x_server = ?sessions.x_server.resolve(), "Virtual desktops: one per account");
                VirtualSessions::new(sessions)
            }
        };
        let lockout = config.lockout;
        let fingerprint = tls.fingerprint.clone();
        let shared = Arc::new(Shared {
            accounts,
            tls,
            desktops,
            throttle: Arc::new(Throttle::new(
                lockout.failures,
                lockout.window,
                lockout.lockout,
                lockout.lockout.saturating_mul(16),
            )),
            frame_interval: config.frame_interval.max(Duration::from_millis(5)),
            codec: config.codec,
            bulk_compression: config.bulk_compression,
            handshake_timeout: config.handshake_timeout.max(Duration::from_secs(1)),
            logon_timeout: config.logon_timeout.clamp(
                Duration::from_secs(1),
                config.handshake_timeout.max(Duration::from_secs(1)),
            ),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            sound: config.sound,
            drives: config.drives.map(|t| t.max(Duration::from_secs(1))),
        });
        Ok(Self {
            listen: config.listen,
            max_connections: config.max_connections,
            per_source: config.per_source,
            shared,
            switches: config.switches,
            fingerprint,
            bound: watch::channel(None).0,
        })
    }

    /// The server's counters, for `/metrics`.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.shared.metrics.clone()
    }

    /// The SHA-256 fingerprint of the server's certificate (`AB:CD:…`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The address the port listens on while *Allow remote connections* is on (`None` while
    /// it is off), as it changes.
    pub fn bound(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.bound.subscribe()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let (switches, follower) = match self.switches {
            SwitchSource::Watch(receiver) => (receiver, None),
            SwitchSource::Manager {
                urls,
                token,
                initial,
                trust,
            } => {
                let feed =
                    Feed::new(&urls, &token, trust.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let (sender, receiver) = watch::channel(initial);
                let task = tokio::spawn(follow_manager(feed, sender, self.fingerprint.clone()));
                (receiver, Some(task))
            }
        };
        let served = crate::server::run(
            ServerConfig {
                listen: self.listen,
                max_connections: self.max_connections,
                per_source: self.per_source,
            },
            self.shared,
            switches,
            Some(self.bound),
            shutdown,
        )
        .await;
        if let Some(task) = follower {
            task.abort();
        }
        served?;
        tracing::info!("RDP server stopped");
        Ok(())
    }
}

/// Applies the switches of this instance from the manager's feed, and reports the
/// certificate's fingerprint (until the manager has it).
async fn follow_manager(mut feed: Feed, switches: watch::Sender<Switches>, fingerprint: String) {
    let mut revision = None;
    let mut reported = false;
    loop {
        if !reported {
            let report = AgentReport {
                cert_fingerprint: Some(fingerprint.clone()),
                revision: None,
            };
            match feed.report(&report).await {
                Ok(()) => reported = true,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not report the certificate to the manager")
                }
            }
        }
        let doc = feed.next(revision).await;
        revision = Some(doc.revision);
        let Some(rd) = doc.instances.first().and_then(|i| i.remote_desktop) else {
            continue;
        };
        Switches {
            enabled: rd.enabled,
            nla_only: rd.nla_only,
        }
        .apply(&switches, "manager");
    }
}
