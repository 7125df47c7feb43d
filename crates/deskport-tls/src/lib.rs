//! Certificates as deskport's servers and clients handle them, in one place: the RDP server and
//! the manager keep a self-signed identity made on first start ([`identity`]); the RDP client
//! (`deskport connect`), the CLI and the agents check a server they talk to against a pinned
//! fingerprint, a CA, or trust on first use in a known-hosts file ([`known_hosts`],
//! [`verify`]). Certificates are named everywhere by their SHA-256 [`fingerprint`].

pub mod identity;
pub mod known_hosts;
pub mod verify;

use sha2::{Digest as _, Sha256};

pub use verify::{ServerTrust, Verifier};

/// SHA-256 of the certificate `der`, as `ab:cd:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as a user writes it — `SHA256:ab:cd:…`, `ab:cd:…` or 64 hex digits, any
/// case — in the form [`fingerprint`] gives; an error says what is wrong with it.
pub fn parse_fingerprint(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let hex = trimmed
        .strip_prefix("SHA256:")
        .or_else(|| trimmed.strip_prefix("sha256:"))
        .unwrap_or(trimmed);
    let digits: String = hex.chars().filter(|c| *c != ':').collect();
    let bad = || {
        format!(
            "{text:?} is not a SHA-256 certificate fingerprint (expected SHA256: and 32 bytes in \
             hex, e.g. SHA256:ab:cd:…, as the manager prints at start)"
        )
    };
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    if hex.contains(':') && hex.split(':').any(|pair| pair.len() != 2) {
        return Err(bad());
    }
    let lower = digits.to_ascii_lowercase();
    Ok(lower
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_in_every_form_and_bad_ones_are_refused() {
        let fp = fingerprint(b"certificate");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&fp).unwrap(), fp);
        assert_eq!(parse_fingerprint(&format!("SHA256:{fp}")).unwrap(), fp);
        assert_eq!(
            parse_fingerprint(&format!(" sha256:{} ", fp.to_ascii_uppercase())).unwrap(),
            fp
        );
        assert_eq!(parse_fingerprint(&fp.replace(':', "")).unwrap(), fp);
        for bad in [
            "",
            "SHA256:",
            "ab:cd",
            &fp[3..],
            &format!("{fp}:00"),
            &fp.replace('a', "g"),
            &format!("a{}", &fp[..fp.len() - 1]),
        ] {
            let err = parse_fingerprint(bad).unwrap_err();
            assert!(err.contains("SHA-256"), "{err}");
        }
    }
}
