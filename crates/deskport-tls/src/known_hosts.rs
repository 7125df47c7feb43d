//! Trust on first use, as ssh does: the first certificate seen for `host:port` is remembered in
//! a known-hosts file; a later, different one is refused with both fingerprints.
//!
//! File format: one `host:port SHA256 fingerprint` per line, `#` comments.

use std::path::{Path, PathBuf};

/// What the known-hosts file says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The same certificate as before.
    Known,
    /// Never seen: it was added.
    Added,
    /// A different certificate than the one remembered.
    Changed { known: String },
}

#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> std::io::Result<Vec<(String, String)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let host = parts.next()?;
                let kind = parts.next()?;
                let fp = parts.next()?;
                (kind == "SHA256").then(|| (host.to_owned(), fp.to_ascii_lowercase()))
            })
            .collect())
    }

    /// Checks `fingerprint` for `endpoint` (`host:port`), remembering it if new.
    pub fn check(&self, endpoint: &str, fingerprint: &str) -> std::io::Result<Trust> {
        let fingerprint = fingerprint.to_ascii_lowercase();
        if let Some((_, known)) = self.entries()?.into_iter().find(|(h, _)| h == endpoint) {
            return Ok(if known == fingerprint {
                Trust::Known
            } else {
                Trust::Changed { known }
            });
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(f, "{endpoint} SHA256 {fingerprint}")?;
        Ok(Trust::Added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_is_remembered_and_a_change_is_caught() {
        let dir = deskport_testsupport::data_dir();
        let k = KnownHosts::new(&dir.path().join("sub/known_hosts"));
        assert_eq!(k.check("h:3389", "AA:BB").unwrap(), Trust::Added);
        assert_eq!(k.check("h:3389", "aa:bb").unwrap(), Trust::Known);
        assert_eq!(k.check("h:3390", "cc:dd").unwrap(), Trust::Added);
        assert_eq!(
            k.check("h:3389", "cc:dd").unwrap(),
            Trust::Changed {
                known: "aa:bb".into()
            }
        );
    }
}
