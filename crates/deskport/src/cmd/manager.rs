//! `deskport manager`: the control plane (HTTP API, console, agents' feed) on SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use deskport_manager::ManagerConfig;
use deskport_policy::Quota;
use serde::{Deserialize, Serialize};

/// `[manager]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerSettings {
    /// Address of the HTTP API and the console.
    pub listen: SocketAddr,
    /// Directory of the SQLite database (`deskport.db`); default `~/.local/share/deskport`.
    pub data_dir: Option<PathBuf>,
    /// Another database: `sqlite:PATH`.
    pub db: Option<String>,
    /// Security groups per project at most.
    pub quota_groups: usize,
    /// Security-group rules per project at most.
    pub quota_rules: usize,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        let quota = Quota::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: None,
            db: None,
            quota_groups: quota.groups,
            quota_rules: quota.rules,
            body_limit: 64 * 1024,
        }
    }
}

/// Flags of `deskport manager` (the settings layer of `[manager]`).
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// Directory for the database [default: ~/.local/share/deskport].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Database URL: `sqlite:PATH` (default: SQLite in the data directory).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<String>,
}

/// `$XDG_DATA_HOME/deskport`, else `~/.local/share/deskport`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("deskport"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither $XDG_DATA_HOME nor $HOME is set; give --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/deskport"))
}

/// The manager's configuration from its settings.
pub fn config(
    settings: &ManagerSettings,
    rdp_user: Option<String>,
) -> anyhow::Result<ManagerConfig> {
    Ok(ManagerConfig {
        data_dir: match &settings.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        },
        db: settings.db.clone(),
        quota: Quota {
            groups: settings.quota_groups,
            rules: settings.quota_rules,
        },
        rdp_user,
        body_limit: settings.body_limit,
    })
}

pub fn exec(_args: Args, settings: &ManagerSettings) -> anyhow::Result<()> {
    let config = config(settings, None)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let store = deskport_manager::open_store(&config).await?;
        let admin_password = std::env::var("DESKPORT_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
        let generated = deskport_manager::bootstrap(&*store, admin_password).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        println!("deskport manager: http://{addr} (data in {})", config.data_dir.display());
        if let Some(password) = generated {
            println!("administrator: admin / {password}  (shown once; set DESKPORT_ADMIN_PASSWORD to choose it)");
        }
        let app = deskport_manager::app(deskport_manager::state(store, &config), config.body_limit);
        tracing::info!(%addr, "Manager started");
        deskport_manager::serve(listener, app, crate::cmd::firewall::shutdown_signal()).await?;
        tracing::info!("Manager stopped");
        Ok(())
    })
}
