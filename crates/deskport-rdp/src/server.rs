//! The listener and the connections: the port is open only while *Allow remote connections*
//! is on; every connection runs in a task of its own, bounded in number and in the time its
//! connection sequence may take.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::connection::{self, Admission, Shared};
use crate::metrics::Refusal;

/// The article's two switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// *Allow remote connections to this computer*: off, the port refuses.
    pub enabled: bool,
    /// *Allow connections only from computers running Remote Desktop with NLA*.
    pub nla_only: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            enabled: true,
            nla_only: true,
        }
    }
}

impl Switches {
    /// Makes `self` the switches in force through `sender`, logging a change (`source` says
    /// who changed them); no change, no wake-up.
    pub fn apply(self, sender: &watch::Sender<Switches>, source: &'static str) {
        sender.send_if_modified(|current| {
            let changed = *current != self;
            if changed {
                tracing::info!(
                    enabled = self.enabled,
                    nla_only = self.nla_only,
                    "Remote Desktop switches changed by the {source}"
                );
                *current = self;
            }
            changed
        });
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections at most (the rest are closed at once).
    pub max_connections: usize,
    /// What one address may have of them (in the connection sequence, new per second).
    pub per_source: crate::admit::SourceLimits,
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("listen on {addr}"))?;
    socket.listen(128)?;
    Ok(TcpListener::from_std(socket.into())?)
}

fn socket_for(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
}

/// Serves until `shutdown` resolves, following `switches`. `bound` learns the listening
/// address each time the port opens (tests bind port 0).
pub async fn run(
    config: ServerConfig,
    shared: Arc<Shared>,
    mut switches: watch::Receiver<Switches>,
    bound: Option<watch::Sender<Option<SocketAddr>>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (close, _) = watch::channel::<Option<String>>(None);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let sources = crate::admit::Sources::new(config.per_source);
    let mut listener: Option<TcpListener> = None;
    tokio::pin!(shutdown);
    loop {
        let now = *switches.borrow_and_update();
        if now.enabled && listener.is_none() {
            let l = bind(config.listen)?;
            let addr = l.local_addr()?;
            tracing::info!(%addr, nla_only = now.nla_only, "Remote connections allowed");
            if let Some(b) = &bound {
                b.send_replace(Some(addr));
            }
            listener = Some(l);
        } else if !now.enabled && listener.is_some() {
            listener = None;
            tracing::info!("Remote connections switched off: the port is closed");
            if let Some(b) = &bound {
                b.send_replace(None);
            }
        }
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => {
                close.send_replace(Some("the RDP server is shutting down".to_owned()));
                return Ok(());
            }
            changed = switches.changed() => {
                if changed.is_err() {
                    // The source of the switches is gone: keep the last ones.
                    std::future::pending::<()>().await;
                }
            }
            accepted = accept => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // The address's share first: one address never takes the global slots.
                let metrics = shared.metrics.clone();
                let handshake = match sources.admit(peer.ip()) {
                    Ok(h) => h,
                    Err(why) => {
                        metrics.refused(why);
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.refused(Refusal::Limit);
                    tracing::warn!(%peer, limit = config.max_connections, "Connection limit reached; closed");
                    continue;
                };
                metrics.accepted();
                metrics.opened();
                let admission = Admission { nla_only: now.nla_only };
                let shared = shared.clone();
                let close = close.subscribe();
                tokio::spawn(async move {
                    let served =
                        connection::serve(shared, tcp, peer, admission, close, handshake).await;
                    if let Err(e) = &served {
                        tracing::info!(%peer, error = format!("{e:#}"), "Connection ended with an error");
                    }
                    metrics.closed(served.is_err());
                    drop(slot);
                });
            }
        }
    }
}
