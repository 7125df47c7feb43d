//! `deskport rdp-server`: the Remote Desktop service of an instance, and its accounts. Flags
//! become the `[rdp_server]` settings layer (`config::rdp_server`); the service is
//! `deskport_rdp::RdpServer`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deskport_rdp::accounts::Accounts;
use deskport_rdp::server::Switches;
use serde::Serialize;
use tokio::sync::watch;

use crate::cli::UsageError;
use crate::config::rdp_server::RdpServerSettings;
use crate::config::{self, ConfigFile};
use crate::prompt::read_password;

/// Flags of `deskport rdp-server` (the settings layer of `[rdp_server]`).
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// Directory of the account store and the TLS certificate.
    #[arg(long, value_name = "DIR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address of the RDP port [default: 0.0.0.0:3389].
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Share this existing X display (e.g. :0): every logon sees and drives it [default:
    /// a virtual desktop per account, kept across reconnections].
    #[arg(long, value_name = ":N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<String>,
    /// Only clients with Network Level Authentication (CredSSP) may connect.
    #[arg(long, conflicts_with = "no_nla_only")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    nla_only: bool,
    /// Also clients that authenticate inside the session (TLS only), e.g. rdesktop.
    #[arg(long)]
    #[serde(
        rename = "nla_only",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "as_false"
    )]
    no_nla_only: bool,
    /// Refuse remote connections (the port stays closed).
    #[arg(long)]
    #[serde(
        rename = "enabled",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "as_false"
    )]
    disable: bool,
    /// Take the switches from this manager instead of the configuration; several replicas
    /// separated by commas are followed in turn.
    #[arg(long, value_name = "URL[,URL...]", requires = "token")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<String>,
    /// Trust an https:// manager only with this certificate: its SHA-256 fingerprint
    /// (`SHA256:ab:cd:…`, as `deskport manager` prints it and the console shows it).
    #[arg(long, value_name = "SHA256:FP", conflicts_with = "manager_ca_file")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_fingerprint: Option<String>,
    /// Trust an https:// manager whose certificate this CA (PEM file) signed for its host.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_ca_file: Option<PathBuf>,
    /// The instance's agent token (printed by `deskport instance create`).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Serve /metrics (connections accepted, refused by reason, open, failed; sessions
    /// started) and /healthz on ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<UserCommand>,
}

fn as_false<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(false)
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// The accounts that may log on (deskport's own store; NLA needs it).
    #[command(subcommand)]
    User(User),
}

#[derive(Debug, clap::Subcommand)]
enum User {
    /// Add an account (the password is asked for, or read from stdin).
    Add {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account.
    Del { name: String },
    /// Change an account's password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn exec(args: Args, settings: &RdpServerSettings, file: &ConfigFile) -> anyhow::Result<()> {
    // Flags keep their precedence when the configuration is re-read.
    let flags = config::flag_layer("rdp_server", &args)?;
    if let Some(UserCommand::User(command)) = args.command {
        return user(command, &settings.dir()?);
    }
    let (config, switches) = settings.server()?;
    let server = deskport_rdp::RdpServer::open(config)?;
    println!(
        "deskport rdp-server: certificate SHA-256 fingerprint {}",
        server.fingerprint()
    );
    crate::runtime::block_on(async {
        if let Some(switches) = switches {
            tokio::spawn(follow_config(file.clone(), flags, switches));
        }
        if let Some(addr) = settings.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve /metrics on {addr}: {e}"))?;
            let metrics = server.metrics();
            tracing::info!(%addr, "Serving /metrics and /healthz");
            tokio::spawn(deskport_firewall::http::serve_metrics(
                listener,
                Arc::new(move || metrics.render()),
            ));
        }
        server.run(crate::runtime::shutdown_signal()).await
    })
}

fn user(command: User, dir: &Path) -> anyhow::Result<()> {
    let path = Accounts::path(dir);
    let mut accounts = Accounts::load(&path)?;
    match command {
        User::Add {
            name,
            password_stdin,
        } => {
            if !deskport_rdp::accounts::valid_name(&name) {
                return Err(UsageError(format!(
                    "an account name is 1-64 letters, digits or . _ - (got {name:?})"
                ))
                .into());
            }
            let password = read_password(password_stdin, &format!("password for {name}: "))?;
            accounts.add(
                &name,
                &password,
                deskport_policy::unix_ms(std::time::SystemTime::now()),
            )?;
            accounts.save(&path)?;
            println!("added account {name}");
        }
        User::Del { name } => {
            accounts.remove(&name)?;
            accounts.save(&path)?;
            println!("deleted account {name}");
        }
        User::Passwd {
            name,
            password_stdin,
        } => {
            if accounts.get(&name).is_none() {
                anyhow::bail!("there is no account {name:?}");
            }
            let password = read_password(password_stdin, &format!("new password for {name}: "))?;
            accounts.set_password(&name, &password)?;
            accounts.save(&path)?;
            println!("changed the password of {name}");
        }
        User::List { json } => {
            let list: Vec<serde_json::Value> = accounts
                .list()
                .map(|a| serde_json::json!({"name": a.name, "created_at": deskport_api::rfc3339(a.created_at)}))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"accounts": list}))?
                );
            } else {
                for a in accounts.list() {
                    println!("{}", a.name);
                }
            }
        }
    }
    Ok(())
}

/// Re-reads the configuration (file and environment) every second and applies changed
/// switches: editing `[rdp_server] enabled` / `nla_only` needs no restart.
async fn follow_config(
    file: ConfigFile,
    flags: config::FlagLayer,
    switches: watch::Sender<Switches>,
) {
    let flags = [flags];
    let mut last_error = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match config::load(&file, &flags) {
            Ok(s) => {
                last_error = None;
                s.rdp_server.switches().apply(&switches, "configuration");
            }
            Err(e) => {
                let message = format!("{e:#}");
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        error = message,
                        "Configuration not reloaded; the switches stay as they are"
                    );
                }
                last_error = Some(message);
            }
        }
    }
}
