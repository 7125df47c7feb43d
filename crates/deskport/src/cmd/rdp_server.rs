//! `deskport rdp-server`: the Remote Desktop service of an instance, and its accounts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deskport_policy::throttle::Throttle;
use deskport_rdp::accounts::Accounts;
use deskport_rdp::connection::Shared;
use deskport_rdp::desktop::sessions::{SessionConfig, VirtualSessions, XServer};
use deskport_rdp::desktop::x11::X11Desktop;
use deskport_rdp::desktop::{DesktopProvider, Shadow};
use deskport_rdp::server::{ServerConfig, Switches};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cli::UsageError;
use crate::config::{self, ConfigFile};

/// `[rdp_server]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdpServerSettings {
    /// Address of the RDP port.
    pub listen: SocketAddr,
    /// Holds the account store and the TLS certificate; default `~/.local/share/deskport/rdp`.
    pub data_dir: Option<PathBuf>,
    /// Share this existing X display (e.g. `:0`); without it every account gets its own
    /// virtual desktop.
    pub display: Option<String>,
    /// Virtual desktops: the session's programs, each run with `sh -c` as the account's Unix
    /// user (the first is the session: when it exits, the user has logged off).
    pub session_commands: Vec<String>,
    /// Virtual desktops: end a session nobody has been connected to for this many seconds.
    pub session_timeout_secs: u64,
    /// Virtual desktops, running as root: the Unix account every session runs as (default:
    /// the one named like the RDP account; an account without one is refused).
    pub session_unix_user: Option<String>,
    /// Virtual desktops: the X server, `auto` (Xvnc where installed, else Xvfb), `xvnc` (the
    /// screen follows the client's window size) or `xvfb` (fixed size).
    pub session_x_server: XServer,
    /// *Allow remote connections to this computer*.
    pub enabled: bool,
    /// *Allow connections only from computers running Remote Desktop with NLA*.
    pub nla_only: bool,
    /// Take the two switches from this manager (with `token`, the instance's agent token).
    pub manager: Option<String>,
    pub token: Option<String>,
    /// Connections at most.
    pub max_connections: usize,
    /// Seconds a client has to complete the connection sequence.
    pub handshake_timeout_secs: u64,
    /// Milliseconds between screen checks.
    pub frame_interval_ms: u64,
    /// Screen update coding: `auto` (planar bitmaps at 32 bits per pixel, raw otherwise) or
    /// `raw` (always uncompressed).
    pub codec: deskport_rdp::Codec,
    /// Bulk-compress screen updates for clients that offer it (xfreerdp does by default,
    /// rdesktop with -z).
    pub bulk_compression: bool,
    /// How the screen is read: `damage` (only what the X server reports as drawn) or `poll`
    /// (the whole screen at every check, compared tile by tile).
    pub capture: deskport_rdp::desktop::x11::Capture,
    /// Read screen images through MIT-SHM (shared memory) where the X server offers it, rather
    /// than through the X socket.
    pub capture_shm: bool,
    /// Failed logons (per user and per source address) before a lockout.
    pub lockout_failures: u32,
    /// Seconds the failures are counted over.
    pub lockout_window_secs: u64,
    /// Seconds of the first lockout (doubling with each further one, up to 16 times).
    pub lockout_secs: u64,
}

impl Default for RdpServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3389)),
            data_dir: None,
            display: None,
            session_commands: SessionConfig::default_commands(),
            session_timeout_secs: 3600,
            session_unix_user: None,
            session_x_server: XServer::Auto,
            enabled: true,
            nla_only: true,
            manager: None,
            token: None,
            max_connections: 64,
            handshake_timeout_secs: 20,
            frame_interval_ms: 33,
            codec: deskport_rdp::Codec::Auto,
            bulk_compression: true,
            capture: deskport_rdp::desktop::x11::Capture::Damage,
            capture_shm: true,
            lockout_failures: 5,
            lockout_window_secs: 900,
            lockout_secs: 60,
        }
    }
}

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
    /// Take the switches from this manager instead of the configuration.
    #[arg(long, value_name = "URL", requires = "token")]
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<String>,
    /// The instance's agent token (printed by `deskport instance create`).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
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

fn data_dir(settings: &RdpServerSettings) -> anyhow::Result<PathBuf> {
    match &settings.data_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(crate::cmd::manager::default_data_dir()?.join("rdp")),
    }
}

pub fn exec(args: Args, settings: &RdpServerSettings, file: &ConfigFile) -> anyhow::Result<()> {
    let dir = data_dir(settings)?;
    // Flags keep their precedence when the configuration is re-read.
    let flags = config::flag_layer("rdp_server", &args)?;
    if let Some(UserCommand::User(command)) = args.command {
        return user(command, &dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(settings.clone(), dir, file.clone(), flags))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
            let password = crate::cmd::remote::read_password(
                password_stdin,
                &format!("password for {name}: "),
            )?;
            accounts.add(&name, &password, now_ms())?;
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
            let password = crate::cmd::remote::read_password(
                password_stdin,
                &format!("new password for {name}: "),
            )?;
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

pub(crate) async fn serve(
    settings: RdpServerSettings,
    dir: PathBuf,
    file: ConfigFile,
    flags: config::FlagLayer,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let tls = deskport_rdp::tls::load_or_create(&dir.join("tls"))?;
    println!(
        "deskport rdp-server: certificate SHA-256 fingerprint {}",
        tls.fingerprint
    );
    let accounts = deskport_rdp::AccountStore::open(&Accounts::path(&dir))?;
    if accounts.current().is_empty() {
        tracing::warn!(
            "There are no accounts yet: add one with 'deskport rdp-server user add NAME'"
        );
    }
    let desktops: Arc<dyn DesktopProvider> = match &settings.display {
        Some(x_display) => {
            let desktop =
                X11Desktop::connect_with(x_display, settings.capture, settings.capture_shm)?;
            let size = deskport_rdp::desktop::Desktop::size(&desktop);
            tracing::info!(%x_display, ?size, "Sharing the X display");
            Arc::new(Shadow {
                desktop: Arc::new(desktop),
            })
        }
        None => {
            if settings.session_commands.is_empty() {
                return Err(UsageError("[rdp_server] session_commands is empty: a virtual desktop needs at least its session program".to_owned()).into());
            }
            if settings.session_x_server == XServer::Xvnc
                && !deskport_rdp::desktop::sessions::on_path("Xvnc")
            {
                return Err(UsageError("[rdp_server] session_x_server = \"xvnc\" but Xvnc is not installed (the tigervnc-standalone-server package provides it; \"auto\" falls back to Xvfb)".to_owned()).into());
            }
            let x_server = settings.session_x_server.resolve();
            tracing::info!(commands = ?settings.session_commands, ?x_server, "Virtual desktops: one per account");
            VirtualSessions::new(SessionConfig {
                commands: settings.session_commands.clone(),
                disconnected_timeout: Duration::from_secs(settings.session_timeout_secs.max(1)),
                default_size: (1280, 800),
                log_dir: dir.join("sessions"),
                unix_user: settings.session_unix_user.clone(),
                capture: settings.capture,
                x_server: settings.session_x_server,
                capture_shm: settings.capture_shm,
            })
        }
    };
    let shared = Arc::new(Shared {
        accounts,
        tls: tls.clone(),
        desktops,
        throttle: Arc::new(Throttle::new(
            settings.lockout_failures,
            Duration::from_secs(settings.lockout_window_secs),
            Duration::from_secs(settings.lockout_secs),
            Duration::from_secs(settings.lockout_secs.saturating_mul(16)),
        )),
        frame_interval: Duration::from_millis(settings.frame_interval_ms.max(5)),
        codec: settings.codec,
        bulk_compression: settings.bulk_compression,
        handshake_timeout: Duration::from_secs(settings.handshake_timeout_secs.max(1)),
    });
    let initial = Switches {
        enabled: settings.enabled,
        nla_only: settings.nla_only,
    };
    let (switches, receiver) = watch::channel(initial);
    match (&settings.manager, &settings.token) {
        (Some(url), Some(token)) => {
            let client = deskport_api::Client::new(url, Some(token.clone()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tokio::spawn(follow_manager(client, switches, tls.fingerprint.clone()));
        }
        _ => {
            tokio::spawn(follow_config(file, flags, switches));
        }
    }
    deskport_rdp::server::run(
        ServerConfig {
            listen: settings.listen,
            max_connections: settings.max_connections,
        },
        shared,
        receiver,
        None,
        crate::cmd::firewall::shutdown_signal(),
    )
    .await?;
    tracing::info!("RDP server stopped");
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
                let now = Switches {
                    enabled: s.rdp_server.enabled,
                    nla_only: s.rdp_server.nla_only,
                };
                switches.send_if_modified(|current| {
                    let changed = *current != now;
                    if changed {
                        tracing::info!(
                            enabled = now.enabled,
                            nla_only = now.nla_only,
                            "Remote Desktop switches changed"
                        );
                        *current = now;
                    }
                    changed
                });
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

/// Follows the manager's feed for this instance's switches and reports the certificate.
async fn follow_manager(
    client: deskport_api::Client,
    switches: watch::Sender<Switches>,
    fingerprint: String,
) {
    let mut revision = None;
    let mut reported = false;
    loop {
        if !reported {
            let report = deskport_api::v1::AgentReport {
                cert_fingerprint: Some(fingerprint.clone()),
                revision: None,
            };
            match client.agent_report(&report).await {
                Ok(()) => reported = true,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not report the certificate to the manager")
                }
            }
        }
        match client.agent_policy(revision, Duration::from_secs(30)).await {
            Ok(Some(doc)) => {
                revision = Some(doc.revision);
                if let Some(rd) = doc.instances.first().and_then(|i| i.remote_desktop) {
                    let now = Switches {
                        enabled: rd.enabled,
                        nla_only: rd.nla_only,
                    };
                    switches.send_if_modified(|current| {
                        let changed = *current != now;
                        if changed {
                            tracing::info!(
                                enabled = now.enabled,
                                nla_only = now.nla_only,
                                "Remote Desktop switches changed by the manager"
                            );
                            *current = now;
                        }
                        changed
                    });
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "The manager cannot be reached; the switches stay as they are");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
