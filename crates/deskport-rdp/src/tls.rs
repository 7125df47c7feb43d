//! The server's TLS identity: a self-signed certificate made on first start and kept
//! (`tls/cert.pem`, `tls/key.pem` with mode 0600; made by `deskport_tls::identity`, as the
//! manager's is), its SHA-256 fingerprint (shown to users and
//! reported to the manager so clients can pin it), and the public key CredSSP binds to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

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
    // RSA: every RDP client accepts it for CredSSP's public-key binding.
    let identity = deskport_tls::identity::load_or_create(
        dir,
        &deskport_tls::identity::SelfSigned {
            algorithm: &rcgen::PKCS_RSA_SHA256,
            role: "deskport RDP server".to_owned(),
            names: Vec::new(),
        },
    )?;
    let public_key = rcgen::KeyPair::from_pem(&identity.key_pem)
        .context("read the private key")?
        .public_key_raw()
        .to_vec();
    let mut config = identity.server_config()?;
    // CredSSP binds to this TLS channel's key; resumed sessions would not run the exchange
    // against a fresh handshake (MS-CSSP), so every connection gets a full handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsIdentity {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        public_key,
        fingerprint: identity.fingerprint,
        cert_path: identity.cert_path,
    })
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
