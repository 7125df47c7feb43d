//! `[cli]`: where the API commands (`sg`, `rule`, `instance`, …) send their requests, and the
//! CLI profile that `deskport login` and `deskport up` write.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// `[cli]` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliSettings {
    /// The manager's URL, e.g. `http://127.0.0.1:8080`.
    pub url: Option<String>,
    /// An API token (`deskport login` writes it).
    pub token: Option<String>,
}

/// Sets `[cli] url` and `token` in the config file at `path`, keeping everything else in it;
/// creates the file (mode 0600: it holds a secret) and its folders if they are missing.
pub fn write_profile(path: &Path, url: &str, token: &str) -> anyhow::Result<()> {
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    super::write_private(path, doc.to_string().as_bytes())
}
