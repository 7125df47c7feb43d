//! Checking a server's certificate as a client: against a pinned fingerprint, against a CA, or
//! by trust on first use in a known-hosts file — never "accept anything". A refusal is kept so
//! the caller can say why in words (both fingerprints) rather than as a handshake error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::known_hosts::{KnownHosts, Trust};

/// How a client decides to trust a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// The server's certificate must have this SHA-256 fingerprint (as [`crate::fingerprint`]
    /// gives it); names and dates are not checked: the pin is the trust.
    Fingerprint(String),
    /// The server's chain must lead to a certificate of this PEM file, for the host name or
    /// address of the URL (the usual web PKI checks).
    CaFile(PathBuf),
    /// Trust on first use: the first certificate seen for `host:port` is remembered in this
    /// file, a different one later is refused (like ssh and `deskport connect`).
    KnownHosts(PathBuf),
}

impl ServerTrust {
    /// A pin from a fingerprint as a user writes it ([`crate::parse_fingerprint`]).
    pub fn pin(text: &str) -> Result<Self, String> {
        crate::parse_fingerprint(text).map(ServerTrust::Fingerprint)
    }
}

enum Check {
    Pin(String),
    Ca(Arc<WebPkiServerVerifier>),
    KnownHosts(KnownHosts),
}

/// A rustls verifier for one server endpoint (`host:port`) under a [`ServerTrust`].
pub struct Verifier {
    check: Check,
    endpoint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    refused: Mutex<Option<String>>,
    remembered: Mutex<Option<String>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn lock<T: Clone>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().map(|s| s.clone()).unwrap_or_default()
}

fn set<T>(slot: &Mutex<Option<T>>, value: T) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(value);
    }
}

impl Verifier {
    /// A verifier of the server at `endpoint` (`host:port`); reads the CA file now.
    pub fn new(trust: &ServerTrust, endpoint: &str) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let check = match trust {
            ServerTrust::Fingerprint(fp) => Check::Pin(fp.to_ascii_lowercase()),
            ServerTrust::KnownHosts(path) => Check::KnownHosts(KnownHosts::new(path)),
            ServerTrust::CaFile(path) => Check::Ca(ca_verifier(path, provider.clone())?),
        };
        Ok(Arc::new(Self {
            check,
            endpoint: endpoint.to_owned(),
            provider,
            refused: Mutex::new(None),
            remembered: Mutex::new(None),
        }))
    }

    /// Why the last certificate was refused, in words, when it was (and forgets it).
    pub fn take_refusal(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|mut s| s.take())
    }

    /// The fingerprint this verifier added to the known-hosts file (first use), if it did.
    pub fn remembered(&self) -> Option<String> {
        lock(&self.remembered)
    }

    /// A client configuration that checks servers with this verifier.
    pub fn client_config(self: &Arc<Self>) -> anyhow::Result<rustls::ClientConfig> {
        Ok(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .dangerous()
                .with_custom_certificate_verifier(self.clone())
                .with_no_client_auth(),
        )
    }

    fn refuse(&self, message: String) -> rustls::Error {
        set(&self.refused, message.clone());
        rustls::Error::General(message)
    }
}

/// A client configuration that trusts no server at all (no roots): for a client meant for
/// plain HTTP only, so that nothing it is redirected to over TLS is taken on trust.
pub fn trust_nothing() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

fn ca_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    let text =
        std::fs::read(path).with_context(|| format!("read the CA file {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("read the CA file {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate of the CA file {}", path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("the CA file {} holds no PEM certificate", path.display());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .with_context(|| format!("use the CA file {}", path.display()))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let received = crate::fingerprint(end_entity);
        let endpoint = &self.endpoint;
        match &self.check {
            Check::Pin(expected) if *expected == received => Ok(ServerCertVerified::assertion()),
            Check::Pin(expected) => Err(self.refuse(format!(
                "the certificate of {endpoint} is SHA256:{received}, not the pinned \
                 SHA256:{expected}; refusing to talk to it"
            ))),
            Check::Ca(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    self.refuse(format!(
                        "the certificate of {endpoint} (SHA256:{received}) is not trusted by \
                         the CA file: {e}"
                    ))
                }),
            Check::KnownHosts(known) => match known.check(endpoint, &received) {
                Ok(Trust::Known) => Ok(ServerCertVerified::assertion()),
                Ok(Trust::Added) => {
                    set(&self.remembered, received);
                    Ok(ServerCertVerified::assertion())
                }
                Ok(Trust::Changed { known: expected }) => Err(self.refuse(format!(
                    "the certificate of {endpoint} has CHANGED: it is now SHA256:{received}, \
                     but SHA256:{expected} was seen before. It may be an impostor; if the \
                     certificate was replaced on purpose, remove the line for {endpoint} from \
                     {}",
                    known.path().display()
                ))),
                Err(e) => Err(self.refuse(format!(
                    "cannot read the known-hosts file {}: {e}",
                    known.path().display()
                ))),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
