//! The server's TLS identity: a self-signed certificate made on first start and kept
//! (`tls/cert.pem`, `tls/key.pem` with mode 0600), its SHA-256 fingerprint (shown to users and
//! reported to the manager so clients can pin it), and the public key CredSSP binds to.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a connection needs of the server's identity.
#[derive(Clone)]
pub struct TlsIdentity {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The certificate's subjectPublicKey (for RSA, the PKCS#1 RSAPublicKey): what CredSSP's
    /// pubKeyAuth binds the NLA exchange to (MS-CSSP 3.1.5).
    pub public_key: Vec<u8>,
    /// SHA-256 of the certificate (DER), lowercase hex pairs separated by colons.
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

/// Loads the identity from `dir`, creating it on first use.
pub fn load_or_create(dir: &Path) -> anyhow::Result<TlsIdentity> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        create(dir, &cert_path, &key_path)?;
    }
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("read {}", key_path.display()))?;
    let cert = CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("read the certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("read the private key {}", key_path.display()))?;
    let public_key = rcgen::KeyPair::from_pem(&key_pem)
        .context("read the private key")?
        .public_key_raw()
        .to_vec();
    let fingerprint = deskport_proto::fingerprint(&cert);
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("the certificate and key do not fit together")?;
    // CredSSP binds to this TLS channel's key; resumed sessions would not run the exchange
    // against a fresh handshake (MS-CSSP), so every connection gets a full handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsIdentity {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        public_key,
        fingerprint,
        cert_path,
    })
}

fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "deskport".to_owned());
    // RSA: every RDP client accepts it for CredSSP's public-key binding.
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("generate an RSA key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.clone()]).context("certificate parameters")?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{host} (deskport RDP server)"),
    );
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params.self_signed(&key).context("sign the certificate")?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), "Created the server's TLS certificate");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = deskport_testsupport::data_dir();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        assert_eq!(a.public_key, b.public_key);
        // An RSAPublicKey is a DER SEQUENCE.
        assert_eq!(a.public_key[0], 0x30);
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
