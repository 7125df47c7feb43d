//! HTTPS for every manager listener: the certificate (made on first start and kept in the data
//! directory, or given as files), the headers HTTPS responses carry (HSTS, `Secure` cookies), and the rule that plain HTTP
//! is served on loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tokio::net::TcpListener;

use crate::serve::{serve_connections, HttpLimits};
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
    pub(crate) config: Arc<rustls::ServerConfig>,
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

/// Serves `app` over HTTPS with `tls` on `listener` until `shutdown` resolves, with the
/// default [`HttpLimits`].
pub async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    tls: &TlsIdentity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_connections(
        listener,
        app,
        Some(tls.config.clone()),
        HttpLimits::default(),
        Arc::default(),
        shutdown,
    )
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
