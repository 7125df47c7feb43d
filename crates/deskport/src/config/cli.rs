//! `[cli]`: where the API commands (`sg`, `rule`, `instance`, …) send their requests, and the
//! CLI profile that `deskport login` and `deskport up` write, and how the CLI trusts an
//! `https://` manager.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// `[cli]` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliSettings {
    /// The manager's URL, e.g. `https://127.0.0.1:8080`.
    pub url: Option<String>,
    /// An API token (`deskport login` writes it).
    pub token: Option<String>,
    /// Trust an `https://` manager whose certificate has this SHA-256 fingerprint
    /// (`SHA256:ab:cd:…`, as the manager prints it).
    pub fingerprint: Option<String>,
    /// Trust an `https://` manager whose certificate this CA (PEM file) signed.
    pub ca_file: Option<PathBuf>,
    /// Without `fingerprint` or `ca_file`: trust on first use, remembered in this file
    /// (default: `known_hosts` beside the config file, shared with `deskport connect`).
    pub known_hosts: Option<PathBuf>,
}

/// How a manager's certificate is checked: `settings`' pin or CA file, else the known-hosts
/// file (trust on first use). A malformed fingerprint is an error.
pub fn server_trust(settings: &CliSettings) -> anyhow::Result<deskport_api::ServerTrust> {
    use deskport_api::ServerTrust;
    if let Some(fp) = &settings.fingerprint {
        return ServerTrust::pin(fp).map_err(|e| anyhow::anyhow!("[cli] fingerprint: {e}"));
    }
    if let Some(ca) = &settings.ca_file {
        return Ok(ServerTrust::CaFile(ca.clone()));
    }
    Ok(ServerTrust::KnownHosts(match &settings.known_hosts {
        Some(path) => path.clone(),
        None => super::default_config_dir()?.join("known_hosts"),
    }))
}

/// How the profile trusts the manager besides the known-hosts file.
#[derive(Debug, Clone, Default)]
pub struct ProfileTrust {
    pub fingerprint: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Sets `[cli] url`, `token`, `fingerprint` and `ca_file` (removing those `trust` does not
/// give) in the config file at `path`, keeping everything else in it; creates the file (mode
/// 0600: it holds a secret) and its folders if they are missing.
pub fn write_profile(
    path: &Path,
    url: &str,
    token: &str,
    trust: &ProfileTrust,
) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix or remove it", path.display()))?;
    if !doc.contains_table("cli") {
        doc["cli"] = toml_edit::table();
    }
    doc["cli"]["url"] = toml_edit::value(url);
    doc["cli"]["token"] = toml_edit::value(token);
    let cli = doc["cli"]
        .as_table_like_mut()
        .context("[cli] is not a table")?;
    match &trust.fingerprint {
        Some(fp) => {
            cli.insert("fingerprint", toml_edit::value(format!("SHA256:{fp}")));
        }
        None => {
            cli.remove("fingerprint");
        }
    }
    match &trust.ca_file {
        Some(ca) => {
            cli.insert("ca_file", toml_edit::value(ca.display().to_string()));
        }
        None => {
            cli.remove("ca_file");
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    super::write_private(path, doc.to_string().as_bytes())
}
