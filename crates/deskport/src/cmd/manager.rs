//! `deskport manager`: the control plane (HTTP API, console, agents' feed). Flags become the
//! `[manager]` settings layer (`config::manager`); the service is `deskport_manager::Manager`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::manager::ManagerSettings;

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
    /// Database URL: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (default: SQLite in the data directory).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<String>,
}

pub fn exec(_args: Args, settings: &ManagerSettings) -> anyhow::Result<()> {
    let config = settings.config(None)?;
    let admin_password = std::env::var("DESKPORT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    crate::runtime::block_on(async {
        let manager = deskport_manager::Manager::open(&config, admin_password).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        println!(
            "deskport manager: http://{addr} (database {})",
            deskport_manager::Database::of(&config)?
        );
        if let Some(password) = manager.generated_password() {
            println!("administrator: admin / {password}  (shown once; set DESKPORT_ADMIN_PASSWORD to choose it)");
        }
        manager
            .run(listener, crate::runtime::shutdown_signal())
            .await
    })
}
