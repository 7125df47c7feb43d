//! The configuration loader shared by every subcommand.
//!
//! One TOML file holds a section per component (`[log]`, and later `[manager]`, `[firewall]`,
//! …). Values are layered, lowest precedence first:
//!
//! 1. built-in defaults (each section's `Default`);
//! 2. the file: `--config FILE`, else `$DESKPORT_CONFIG`, else
//!    `$XDG_CONFIG_HOME/deskport/config.toml` (`~/.config/deskport/config.toml`);
//! 3. the environment: `DESKPORT_<SECTION>__<KEY>` (e.g. `DESKPORT_LOG__FORMAT=json`);
//! 4. command-line flags.
//!
//! Unknown sections and keys are errors that name the key and where it came from: a typo in a
//! config file must never be silently ignored.

pub mod cli;
pub mod firewall;
pub mod manager;
pub mod rd_gateway;
pub mod rdp_server;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Every section of the configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// `deskport firewall`.
    #[serde(default)]
    pub firewall: firewall::FirewallSettings,
    /// `deskport manager`.
    #[serde(default)]
    pub manager: manager::ManagerSettings,
    /// `deskport rdp-server`.
    #[serde(default)]
    pub rdp_server: rdp_server::RdpServerSettings,
    /// `deskport rd-gateway`.
    #[serde(default)]
    pub rd_gateway: rd_gateway::RdGatewaySettings,
    /// The API commands (`sg`, `rule`, `instance`, …): the manager's URL and token.
    #[serde(default)]
    pub cli: cli::CliSettings,
}

/// `[log]`: where and how deskport logs (always to stderr).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `deskport=debug,info`; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            // rustls warns about every client that sends an IP address as SNI (all RDP clients
            // connecting by address do); that is not worth a line per connection.
            filter: "info,rustls=error".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the configuration file is looked for, in order: the flag, `$DESKPORT_CONFIG`, the
/// XDG default. The flag names a file that must exist; `$DESKPORT_CONFIG` and the default
/// location may be absent (read as empty; `deskport login` and `deskport up` create the file),
/// so that `DESKPORT_CONFIG=other.toml deskport login URL` makes a second CLI profile.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub required: bool,
}

impl ConfigFile {
    pub fn locate(flag: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = flag {
            return Ok(Self {
                path: path.to_owned(),
                required: true,
            });
        }
        if let Some(path) = std::env::var_os("DESKPORT_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(Self {
                path: PathBuf::from(path),
                required: false,
            });
        }
        Ok(Self {
            path: default_config_dir()?.join("config.toml"),
            required: false,
        })
    }
}

/// `$XDG_CONFIG_HOME/deskport`, else `~/.config/deskport`.
pub fn default_config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir).join("deskport"));
    }
    let home = std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .context("neither $XDG_CONFIG_HOME nor $HOME is set; pass --config FILE")?;
    Ok(PathBuf::from(home).join(".config").join("deskport"))
}

/// `$XDG_DATA_HOME/deskport`, else `~/.local/share/deskport`: the data directory of every
/// service unless `--data-dir` says otherwise.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("deskport"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither $XDG_DATA_HOME nor $HOME is set; give --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/deskport"))
}

/// Replaces `path` atomically with `bytes`, readable by the owner only (it holds secrets).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

/// Flags given on the command line for one section, to be layered over file and environment.
/// `flags` must serialize to a map whose `None` fields are skipped (`skip_serializing_if`).
pub fn flag_layer(section: &'static str, flags: &impl Serialize) -> anyhow::Result<FlagLayer> {
    let value = serde_json::to_value(flags).context("serialize command-line flags")?;
    Ok(FlagLayer { section, value })
}

/// One section's command-line flags, made by [`flag_layer`].
#[derive(Debug)]
pub struct FlagLayer {
    section: &'static str,
    value: serde_json::Value,
}

/// Loads the settings: defaults < file < environment < `flags`.
pub fn load(file: &ConfigFile, flags: &[FlagLayer]) -> anyhow::Result<Settings> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if file.path.exists() {
        figment = figment.merge(Toml::file_exact(&file.path));
    } else if file.required {
        anyhow::bail!("config file {} does not exist", file.path.display());
    }
    figment = figment.merge(environment());
    for layer in flags {
        figment = figment.merge(Serialized::default(layer.section, &layer.value));
    }
    figment
        .extract::<Settings>()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// `DESKPORT_<SECTION>__<KEY>` variables. Others starting with `DESKPORT_` (such as
/// `DESKPORT_CONFIG` or `DESKPORT_ADMIN_PASSWORD`) are read by the commands themselves.
fn environment() -> Env {
    Env::prefixed("DESKPORT_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// The settings as TOML, for `deskport config show` (secrets masked).
pub fn to_toml(settings: &Settings) -> anyhow::Result<String> {
    toml::to_string_pretty(&masked(settings)).context("serialize the settings")
}

/// A copy with secrets replaced by `***`.
pub fn masked(settings: &Settings) -> Settings {
    let mut copy = settings.clone();
    for token in [
        &mut copy.cli.token,
        &mut copy.firewall.token,
        &mut copy.rdp_server.token,
        &mut copy.rd_gateway.token,
    ] {
        if token.is_some() {
            *token = Some("***".to_owned());
        }
    }
    copy
}
