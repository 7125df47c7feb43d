//! The RDP server's own account store: who may log on, and the secret NTLM needs.
//!
//! # Threat model
//!
//! NLA (CredSSP with NTLM) proves knowledge of the password through the *NT hash*,
//! MD4(UTF-16LE(password)). The server must hold that hash for every account, and whoever
//! reads it can log on as that user over NTLM without knowing the password: the hash is
//! **password-equivalent**. So the file is created with mode 0600 (owner only), written
//! atomically (temporary file, then rename) and never logged; the server warns when its mode
//! is wider. What it protects against: other local users reading it, a crash leaving a half
//! written file. What it does not: root on the instance, or a backup that copies it; treat
//! those like the machine's own password database. TLS-mode logons send the password itself
//! (inside TLS); it is checked by hashing it and comparing hashes in constant time.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use md4::{Digest as _, Md4};
use serde::{Deserialize, Serialize};

/// An NT hash (MD4 of the UTF-16LE password).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NtHash(pub [u8; 16]);

impl std::fmt::Debug for NtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NtHash(…)")
    }
}

impl NtHash {
    pub fn of_password(password: &str) -> Self {
        let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
        Self(Md4::digest(&utf16).into())
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Compares in time independent of where the hashes differ.
    pub fn matches(&self, other: &NtHash) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub nt_hash: NtHash,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot read the account store {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the account store {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the account store {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an account name is 1-64 letters, digits or . _ - (got {0:?})")]
    BadName(String),
    #[error("a password has at least 8 characters")]
    WeakPassword,
    #[error("there is already an account {0:?}")]
    Exists(String),
    #[error("there is no account {0:?}")]
    NoSuchAccount(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    accounts: Vec<FileAccount>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    name: String,
    nt_hash: String,
    created_at: i64,
}

/// The accounts, keyed by lower-case name (logons are case-insensitive, as on Windows).
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    by_name: BTreeMap<String, Account>,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Accounts {
    /// Where the store lives in a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("accounts.json")
    }

    /// Reads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, AccountError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(AccountError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "The account store is readable by others; it holds password-equivalent hashes (chmod 600)");
            }
        }
        let invalid = |message: String| AccountError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: File = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.version != 1 {
            return Err(invalid(format!("unknown version {}", file.version)));
        }
        let mut by_name = BTreeMap::new();
        for a in file.accounts {
            let nt_hash = NtHash::from_hex(&a.nt_hash)
                .ok_or_else(|| invalid(format!("bad hash for {:?}", a.name)))?;
            if !valid_name(&a.name) {
                return Err(invalid(format!("bad account name {:?}", a.name)));
            }
            by_name.insert(
                a.name.to_ascii_lowercase(),
                Account {
                    name: a.name,
                    nt_hash,
                    created_at: a.created_at,
                },
            );
        }
        Ok(Self { by_name })
    }

    /// Writes the store atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AccountError> {
        let write_error = |source| AccountError::Write {
            path: path.to_owned(),
            source,
        };
        let file = File {
            version: 1,
            accounts: self
                .by_name
                .values()
                .map(|a| FileAccount {
                    name: a.name.clone(),
                    nt_hash: a.nt_hash.to_hex(),
                    created_at: a.created_at,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| write_error(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_error)?;
        f.write_all(text.as_bytes()).map_err(write_error)?;
        f.sync_all().map_err(write_error)?;
        std::fs::rename(&tmp, path).map_err(write_error)
    }

    pub fn get(&self, name: &str) -> Option<&Account> {
        self.by_name.get(&name.to_ascii_lowercase())
    }

    pub fn list(&self) -> impl Iterator<Item = &Account> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn add(&mut self, name: &str, password: &str, now: i64) -> Result<(), AccountError> {
        if !valid_name(name) {
            return Err(AccountError::BadName(name.to_owned()));
        }
        if password.chars().count() < 8 {
            return Err(AccountError::WeakPassword);
        }
        let key = name.to_ascii_lowercase();
        if self.by_name.contains_key(&key) {
            return Err(AccountError::Exists(name.to_owned()));
        }
        self.by_name.insert(
            key,
            Account {
                name: name.to_owned(),
                nt_hash: NtHash::of_password(password),
                created_at: now,
            },
        );
        Ok(())
    }

    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), AccountError> {
        if password.chars().count() < 8 {
            return Err(AccountError::WeakPassword);
        }
        let account = self
            .by_name
            .get_mut(&name.to_ascii_lowercase())
            .ok_or_else(|| AccountError::NoSuchAccount(name.to_owned()))?;
        account.nt_hash = NtHash::of_password(password);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<(), AccountError> {
        self.by_name
            .remove(&name.to_ascii_lowercase())
            .map(|_| ())
            .ok_or_else(|| AccountError::NoSuchAccount(name.to_owned()))
    }

    /// Whether `password` is `name`'s password (TLS-mode logons).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        self.get(name)
            .is_some_and(|a| a.nt_hash.matches(&NtHash::of_password(password)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_matches_the_known_vector() {
        // MS-NLMP 4.2.4.1.1: NTOWFv1("Password").
        assert_eq!(
            NtHash::of_password("Password").to_hex(),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
    }

    #[test]
    fn store_round_trips_with_mode_0600_and_rejects_bad_input() {
        let dir = deskport_testsupport::data_dir();
        let path = Accounts::path(dir.path());
        let mut a = Accounts::load(&path).unwrap();
        assert!(a.is_empty());
        a.add("Alice", "correct horse", 1).unwrap();
        assert!(matches!(
            a.add("alice", "whatever1", 2),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            a.add("bob smith", "whatever1", 2),
            Err(AccountError::BadName(_))
        ));
        assert!(matches!(
            a.add("bob", "short", 2),
            Err(AccountError::WeakPassword)
        ));
        a.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = Accounts::load(&path).unwrap();
        assert!(b.verify("ALICE", "correct horse"));
        assert!(!b.verify("alice", "correct horsE"));
        assert!(!b.verify("carol", "correct horse"));
        assert_eq!(b.get("alice").unwrap().name, "Alice");
        std::fs::write(&path, "{\"version\": 1, \"accounts\": [{\"name\": \"x\", \"nt_hash\": \"zz\", \"created_at\": 0}]}").unwrap();
        assert!(matches!(
            Accounts::load(&path),
            Err(AccountError::Invalid { .. })
        ));
    }
}
