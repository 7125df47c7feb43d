//! Every manager listener's connections (and `deskport rd-gateway`'s): accepted under a cap
//! per source address and a global cap, TLS handshakes bounded, HTTP/1.1 served by hyper with a
//! header-read timeout (which also ends idle keep-alive connections) and a body timeout between
//! a request body's pieces, upgrades allowed (the RD Gateway's WebSocket form), and a graceful
//! stop.
//!
//! Why not `axum::serve`: it has no header-read timeout and no caps, so a few thousand
//! half-sent requests from one address hold the manager's descriptors for as long as their
//! sender likes, and every other address with them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service as _;

/// A listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a connection's start (or its previous response) to a request's complete header;
    /// then the connection is closed. Also bounds idle keep-alive connections.
    pub header_timeout: Duration,
    /// Connections from one address at once; more are closed at once.
    pub per_source: usize,
    /// Connections at once in all.
    pub max_connections: usize,
    /// The longest wait for the next piece of a request's body (the RD Gateway's never-ending
    /// legacy body excepted: its tunnel has its own keepalives and limits).
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            // Agents long-poll from their hosts; many instances can share one address (NAT,
            // one host running several agents).
            per_source: 1000,
            max_connections: 10_000,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// A TLS handshake at most.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the caps turned away, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refusals {
    pub per_source: AtomicU64,
    pub total: AtomicU64,
}

/// Connections counted per source and in all.
#[derive(Debug)]
struct Counts {
    by_source: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    /// The last time a refusal was logged (one line a second at most).
    logged: Mutex<Option<Instant>>,
}

/// A connection's place in the counts, given back when it ends.
struct Slot {
    counts: Arc<Counts>,
    source: IpAddr,
}

impl Counts {
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let held = by_source.get(&source).copied().unwrap_or(0);
        let refused = if held >= self.limits.per_source {
            Some((&self.refusals.per_source, "connections from one address"))
        } else if self.total.load(Ordering::SeqCst) >= self.limits.max_connections {
            Some((&self.refusals.total, "connections in all"))
        } else {
            None
        };
        if let Some((counter, what)) = refused {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                *logged = Some(Instant::now());
                tracing::warn!(%source, limit = %what, "Refused a connection: too many {what}");
            }
            return None;
        }
        by_source.insert(source, held + 1);
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_source = self
            .counts
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = by_source.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                by_source.remove(&self.source);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` (over TLS with `tls`, else plain HTTP) until `shutdown`
/// resolves; requests in progress then get [`STOP_GRACE`] to finish.
pub async fn serve_connections(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let counts = Arc::new(Counts {
        by_source: Mutex::new(HashMap::new()),
        total: AtomicUsize::new(0),
        limits,
        refusals,
        logged: Mutex::new(None),
    });
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(slot) = counts.take(peer.ip()) else {
            drop(tcp);
            continue;
        };
        // RDP rides on these connections through the RD Gateway: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            slot,
            app.clone(),
            tls.clone(),
            limits,
            stopping.clone(),
        ));
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    stopping: watch::Receiver<bool>,
) {
    let _slot = slot;
    match tls {
        None => http(tcp, peer, app, limits, stopping).await,
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(stream, peer, app, limits, stopping).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// HTTP/1.1 on one connection, the peer's address given to handlers as
/// `ConnectInfo<SocketAddr>`.
async fn http<IO>(
    io: IO,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let gateway = request.uri().path() == deskport_gateway::PATH;
        let mut request: Request = request.map(|body| match gateway {
            true => Body::new(body),
            false => Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, body)),
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(request).await.map_err(|e: Infallible| e) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
