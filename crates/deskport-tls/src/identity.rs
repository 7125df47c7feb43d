//! A server's TLS identity on disk: a self-signed certificate made on first start and kept
//! (`cert.pem`, and `key.pem` with mode 0600), or files the operator gives; read with errors
//! that name the file and what is wrong with it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, read from PEM files.
#[derive(Debug)]
pub struct Identity {
    /// The chain, the server's own certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The private key as PEM (for those who need its public half).
    pub key_pem: String,
    /// SHA-256 of the server's own certificate ([`crate::fingerprint`]).
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

/// What a self-signed certificate is made with.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The key's algorithm (RDP wants RSA; ECDSA P-256 is quicker to make).
    pub algorithm: &'static rcgen::SignatureAlgorithm,
    /// Said in the common name after the host name, e.g. "deskport RDP server".
    pub role: String,
    /// Subject alternative names besides the host name (DNS names or IP addresses).
    pub names: Vec<String>,
}

/// Loads `cert.pem` and `key.pem` from `dir`, making them first (self-signed, as `how`
/// says) when either is missing.
pub fn load_or_create(dir: &Path, how: &SelfSigned) -> anyhow::Result<Identity> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        create(dir, &cert_path, &key_path, how)?;
    }
    load(&cert_path, &key_path)
}

/// Reads a PEM certificate chain and a PEM private key.
pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Identity> {
    let cert_text = std::fs::read(cert_path)
        .with_context(|| format!("read the certificate {}", cert_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("read the certificate {}", cert_path.display()))?;
    let Some(first) = chain.first() else {
        anyhow::bail!(
            "the certificate file {} holds no PEM certificate",
            cert_path.display()
        );
    };
    let fingerprint = crate::fingerprint(first);
    let key_pem = std::fs::read_to_string(key_path)
        .with_context(|| format!("read the private key {}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| {
            format!(
                "the private key file {} holds no PEM private key",
                key_path.display()
            )
        })?;
    Ok(Identity {
        chain,
        key,
        key_pem,
        fingerprint,
        cert_path: cert_path.to_owned(),
    })
}

impl Identity {
    /// A rustls server configuration serving this identity; refuses a key that is not the
    /// certificate's.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .with_context(|| {
                format!(
                    "the private key does not fit the certificate {}",
                    self.cert_path.display()
                )
            })
    }
}

fn create(dir: &Path, cert_path: &Path, key_path: &Path, how: &SelfSigned) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "deskport".to_owned());
    let key = rcgen::KeyPair::generate_for(how.algorithm).context("generate a key")?;
    let mut names = vec![host.clone()];
    names.extend(how.names.iter().filter(|n| **n != host).cloned());
    let mut params = rcgen::CertificateParams::new(names).context("certificate parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{host} ({})", how.role));
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params.self_signed(&key).context("sign the certificate")?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), role = how.role, "Created a TLS certificate");
    Ok(())
}

/// Writes `bytes` to `path`, readable and writable by the owner only (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn how() -> SelfSigned {
        SelfSigned {
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            role: "test".into(),
            names: vec!["127.0.0.1".into()],
        }
    }

    #[test]
    fn identity_is_created_once_kept_private_and_mismatches_are_refused() {
        let dir = deskport_testsupport::data_dir();
        let a = load_or_create(&dir.path().join("a"), &how()).unwrap();
        let again = load_or_create(&dir.path().join("a"), &how()).unwrap();
        assert_eq!(a.fingerprint, again.fingerprint);
        a.server_config().unwrap();
        let mode = std::fs::metadata(dir.path().join("a/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let b = load_or_create(&dir.path().join("b"), &how()).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        let mixed = load(
            &dir.path().join("a/cert.pem"),
            &dir.path().join("b/key.pem"),
        )
        .unwrap();
        let err = format!("{:#}", mixed.server_config().unwrap_err());
        assert!(err.contains("does not fit"), "{err}");

        let missing = format!(
            "{:#}",
            load(&dir.path().join("none.pem"), &dir.path().join("a/key.pem")).unwrap_err()
        );
        assert!(missing.contains("none.pem"), "{missing}");
        let swapped = format!(
            "{:#}",
            load(
                &dir.path().join("a/key.pem"),
                &dir.path().join("a/cert.pem")
            )
            .unwrap_err()
        );
        assert!(swapped.contains("no PEM certificate"), "{swapped}");
    }
}
