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

    /// Checks `fingerprint` for `endpoint` (`host:port`), remembering it if new. An endpoint
    /// or fingerprint the file could not hold as one entry (empty, with white space or control
    /// characters, or an endpoint starting with `#`, which would read as a comment) is an
    /// error: remembered, it would never be found again, and the next certificate would be
    /// "new" whatever it is.
    pub fn check(&self, endpoint: &str, fingerprint: &str) -> std::io::Result<Trust> {
        let storable =
            |t: &str| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c.is_control());
        if !storable(endpoint) || endpoint.starts_with('#') || !storable(fingerprint) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{endpoint:?} with {fingerprint:?} cannot be a known-hosts entry"),
            ));
        }
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
        use std::io::{Read as _, Seek as _, Write as _};
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        // A file whose last line has no newline (edited by hand) would glue the new entry to
        // it, losing both.
        let mut last = [0u8; 1];
        let len = f.seek(std::io::SeekFrom::End(0))?;
        let glued = len > 0 && {
            f.seek(std::io::SeekFrom::End(-1))?;
            f.read_exact(&mut last)?;
            last[0] != b'\n'
        };
        let separator = if glued { "\n" } else { "" };
        writeln!(f, "{separator}{endpoint} SHA256 {fingerprint}")?;
        Ok(Trust::Added)
    }
}

/// The fuzzing oracle of the known-hosts file (see `fuzz/`): `data` cut at 0xff bytes into a
/// file's text, an endpoint and a fingerprint. Whatever the file holds, a certificate checked
/// and remembered is known the next time, and another one for the same endpoint is caught as
/// changed, naming the remembered one.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut parts = data.split(|b| *b == 0xff).map(String::from_utf8_lossy);
    let (text, endpoint, fingerprint) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = std::env::temp_dir().join(format!(
        "deskport-known-hosts-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    // Removed however the oracle ends (an assertion's panic included).
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&path);
    if std::fs::write(&path, text.as_bytes()).is_err() {
        return;
    }
    let hosts = KnownHosts::new(&path);
    match hosts.check(&endpoint, &fingerprint) {
        Ok(Trust::Added | Trust::Known) => {
            let known = fingerprint.to_ascii_lowercase();
            assert_eq!(
                hosts.check(&endpoint, &fingerprint).ok(),
                Some(Trust::Known),
                "{endpoint:?} {known:?}"
            );
            assert_eq!(
                hosts.check(&endpoint, &format!("{known}00")).ok(),
                Some(Trust::Changed {
                    known: known.clone()
                }),
                "{endpoint:?} {known:?}"
            );
        }
        // Still the same answer: nothing was written over the remembered entry.
        Ok(changed @ Trust::Changed { .. }) => assert_eq!(
            hosts.check(&endpoint, &fingerprint).ok(),
            Some(changed),
            "{endpoint:?}"
        ),
        Err(_) => {}
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
        // What the file could not hold as one entry is refused, and nothing is written.
        for (endpoint, fp) in [
            ("h 1:3389", "aa"),
            ("#h:3389", "aa"),
            ("h:1", "a b"),
            ("", "aa"),
        ] {
            let err = k.check(endpoint, fp).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{endpoint:?}");
        }
        let text = std::fs::read_to_string(k.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        // A last line without its newline (edited by hand) keeps its entry.
        std::fs::write(k.path(), "h:3389 SHA256 aa:bb").unwrap();
        assert_eq!(k.check("g:3389", "ee").unwrap(), Trust::Added);
        assert_eq!(k.check("h:3389", "aa:bb").unwrap(), Trust::Known);
        assert_eq!(k.check("g:3389", "ee").unwrap(), Trust::Known);
    }
}
