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
    /// Address to serve HTTPS on (plain HTTP, with --insecure-http, only on loopback)
    /// [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Database URL: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (default: SQLite in the data directory).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<String>,
    /// The HTTPS certificate chain (PEM) to serve [default: a self-signed certificate made on
    /// first start and kept in DATA_DIR/tls/].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS: only on a loopback --listen address (tokens and
    /// passwords would cross the network in clear).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    #[serde(
        rename = "tls",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "as_false"
    )]
    insecure_http: bool,
}

fn as_false<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(false)
}

pub fn exec(_args: Args, settings: &ManagerSettings) -> anyhow::Result<()> {
    let config = settings.config(None)?;
    deskport_manager::check_listen(settings.listen, &config.tls)?;
    let admin_password = std::env::var("DESKPORT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    crate::runtime::block_on(async {
        let manager = deskport_manager::Manager::open(&config, admin_password).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if manager.tls().is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "deskport manager: {scheme}://{addr} (database {})",
            deskport_manager::Database::of(&config)?
        );
        if let Some(tls) = manager.tls() {
            println!(
                "certificate: SHA256:{} ({}); agents pin it with --manager-fingerprint",
                tls.fingerprint,
                tls.cert_path.display()
            );
        }
        if let Some(password) = manager.generated_password() {
            println!("administrator: admin / {password}  (shown once; set DESKPORT_ADMIN_PASSWORD to choose it)");
        }
        manager
            .run(listener, crate::runtime::shutdown_signal())
            .await
    })
}
