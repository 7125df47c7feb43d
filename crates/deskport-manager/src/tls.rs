//! HTTPS for every manager listener: the certificate (made on first start and kept in the data
//! directory, or given as files), the TLS listener the HTTP server accepts connections from,
//! the headers HTTPS responses carry (HSTS, `Secure` cookies), and the rule that plain HTTP
//! is served on loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::serve::ListenerExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::ManagerConfig;

/// How the manager serves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Tls {
    /// HTTPS with a self-signed certificate made on first start and kept in the data
    /// directory (`tls/cert.pem`, `tls/key.pem`).
    #[default]
    SelfSigned,
    /// HTTPS with this certificate chain and private key (PEM files).
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP: on a loopback address only, and only when asked for.
    PlainHttp,
}

/// Refuses plain HTTP on an address that is not loopback.
pub fn check_listen(addr: SocketAddr, tls: &Tls) -> anyhow::Result<()> {
    if *tls == Tls::PlainHttp && !addr.ip().is_loopback() {
        anyhow::bail!(
            "plain HTTP is served on a loopback address only, and {addr} is not one: serve \
             HTTPS (the default, with a certificate made on first start or --tls-cert/--tls-key) \
             or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// The certificate the manager serves and its rustls configuration.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate, `ab:cd:…`.
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The identity `config` asks for (`None` for plain HTTP), made first when it is the
    /// self-signed one and missing.
    pub fn of(config: &ManagerConfig) -> anyhow::Result<Option<Self>> {
        Self::for_role(&config.tls, &config.data_dir, "deskport manager")
    }

    /// The identity `tls` asks for of a server playing `role` (the manager, an RD Gateway)
    /// with its data in `data_dir`.
    pub fn for_role(tls: &Tls, data_dir: &Path, role: &str) -> anyhow::Result<Option<Self>> {
        let identity = match tls {
            Tls::PlainHttp => return Ok(None),
            Tls::SelfSigned => deskport_tls::identity::load_or_create(
                &data_dir.join("tls"),
                &deskport_tls::identity::SelfSigned {
                    algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
                    role: role.to_owned(),
                    names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
                },
            )
            .with_context(|| format!("the {role}'s TLS certificate"))?,
            Tls::Files { cert, key } => deskport_tls::identity::load(cert, key)
                .with_context(|| format!("the {role}'s TLS certificate (--tls-cert, --tls-key)"))?,
        };
        let mut server = identity.server_config()?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Self {
            config: Arc::new(server),
            fingerprint: identity.fingerprint,
            cert_path: identity.cert_path,
        }))
    }
}

/// A listener whose connections have completed the TLS handshake. Handshakes run on their own
/// tasks (at most [`HANDSHAKE_TIMEOUT`] each), so a slow client holds up no one else.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn new(listener: TcpListener, tls: &TlsIdentity) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // RDP through the RD Gateway rides on these connections: no Nagle delay.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it does not, but for the types' sake): no more clients.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` over HTTPS with `tls` on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    tls: &TlsIdentity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // `tap_io` (doing nothing) is what gives this listener's connections their peer address
    // as `ConnectInfo<SocketAddr>`.
    let listener = TlsListener::new(listener, tls)
        .context("the listener's address")?
        .tap_io(|_| {});
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serve HTTPS")
}

/// What every HTTPS response carries: HSTS, and `Secure` on every cookie it sets.
pub(crate) async fn https_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            let text = v.to_str().ok()?;
            HeaderValue::from_str(&format!("{text}; Secure")).ok()
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
    response
}
