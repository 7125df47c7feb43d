//! `deskport up`: the whole system on one machine — the manager on SQLite, one local instance
//! (`desktop`) with a virtual X desktop and the RDP server, and the firewall, all in this
//! process; Ctrl-C stops everything, and running it again keeps all state (database, accounts,
//! certificate, credentials).
//!
//! The firewall: by default the userspace gateway publishes the instance's RDP port on
//! 127.0.0.1 and forwards allowed connections to the RDP server on an internal port. With
//! `--firewall nft` (root) the RDP server listens on the public port itself and an nftables
//! table in host placement judges new connections to that port only (loopback included: the
//! rest of the machine's services are not the instance's); the table is removed when `up`
//! stops.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use deskport_api::v1::{CreateInstance, TokenRequest, UpdateRemoteDesktop};
use deskport_api::Client;
use deskport_firewall::agent::Source;
use deskport_rdp::accounts::Accounts;
use serde::{Deserialize, Serialize};

use crate::cli::UsageError;
use crate::cmd::firewall::BackendKind;
use crate::config::{ConfigFile, Settings};

/// The instance `up` creates.
const INSTANCE: &str = "desktop";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for all state (database, RDP accounts and certificate, credentials)
    /// [default: ~/.local/share/deskport].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the manager (HTTP API and console).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    console: SocketAddr,
    /// The public RDP port on 127.0.0.1, published by the firewall.
    #[arg(long, value_name = "PORT", default_value_t = 3389, value_parser = clap::value_parser!(u16).range(1..))]
    rdp_port: u16,
    /// The firewall: `gateway` (userspace, no privileges: publishes the port and forwards to
    /// the RDP server) or `nft` (root: the RDP server on the port itself, behind an nftables
    /// table that judges connections to that port).
    #[arg(
        long,
        value_enum,
        value_name = "gateway|nft",
        default_value = "gateway"
    )]
    firewall: BackendKind,
    /// Size of the instance's virtual desktop.
    #[arg(long, value_name = "WxH", default_value = "1280x800", value_parser = crate::cmd::parse_size)]
    desktop: (u16, u16),
}

/// What `up` remembers between runs, in `DIR/up.json` (mode 0600: it holds secrets).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct UpState {
    admin_password: Option<String>,
    api_token: Option<String>,
    rdp_user: Option<String>,
    rdp_password: Option<String>,
    agent_token: Option<String>,
    internal_port: Option<u16>,
}

impl UpState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("up.json")
    }

    fn load(dir: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(Self::path(dir)) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!("{} is damaged; fix or remove it", Self::path(dir).display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", Self::path(dir).display())),
        }
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        crate::cmd::write_private(
            &Self::path(dir),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn generate_password() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// The virtual desktop: Xvfb, a window manager and a terminal when they are installed.
struct Desktop {
    display: String,
    children: Vec<Child>,
}

impl Desktop {
    fn start(size: (u16, u16), log: &Path) -> anyhow::Result<Self> {
        let log_file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open {}", log.display()))
        };
        let (xvfb, display) = deskport_rdp::desktop::sessions::start_xvfb(size, log, false)?;
        let mut children = vec![xvfb];
        // The background is set once the window manager runs (it paints the root itself).
        let session = [
            &["openbox", "--startup", "xsetroot -solid '#1f4e79'"][..],
            &["xterm", "-geometry", "100x30+40+40"][..],
        ];
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_dir());
        for program in session {
            let mut command = Command::new(program[0]);
            if let Some(home) = &home {
                command.current_dir(home);
            }
            match command
                .args(&program[1..])
                .env("DISPLAY", &display)
                .stdin(Stdio::null())
                .stdout(log_file()?)
                .stderr(log_file()?)
                .spawn()
            {
                Ok(child) => children.push(child),
                Err(e) => tracing::warn!(program = program[0], error = %e, "Not on the desktop"),
            }
        }
        Ok(Self { display, children })
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        // Last started first: the session's programs, then the X server.
        for child in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = child.wait();
        }
    }
}

pub fn exec(args: Args, settings: &Settings, file: &ConfigFile) -> anyhow::Result<()> {
    if args.firewall == BackendKind::Nft && !nix::unistd::geteuid().is_root() {
        return Err(UsageError(
            "`up --firewall nft` changes the kernel's nftables ruleset: run it as root (or use the \
             default gateway firewall, which needs no privileges)"
                .to_owned(),
        )
        .into());
    }
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::cmd::manager::default_data_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run(args, settings.clone(), file.clone(), dir))
}

fn refused(e: deskport_api::client::ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn run(args: Args, settings: Settings, file: ConfigFile, dir: PathBuf) -> anyhow::Result<()> {
    let mut state = UpState::load(&dir)?;
    let public = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.rdp_port));
    drop(std::net::TcpListener::bind(public).map_err(|e| {
        anyhow::anyhow!("{public} is not free ({e}): another RDP server? Pass --rdp-port PORT")
    })?);
    let internal_port = match state.internal_port {
        Some(p) => p,
        None => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    };
    state.internal_port = Some(internal_port);
    let internal = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, internal_port));

    // Credentials: the environment's, else the ones generated on the first run.
    let admin_password = env("DESKPORT_ADMIN_PASSWORD")
        .or(state.admin_password.clone())
        .unwrap_or_else(generate_password);
    if env("DESKPORT_ADMIN_PASSWORD").is_none() {
        state.admin_password = Some(admin_password.clone());
    }
    let rdp_user = env("DESKPORT_RDP_USER")
        .or(state.rdp_user.clone())
        .or_else(|| env("USER").filter(|u| deskport_rdp::accounts::valid_name(u)))
        .unwrap_or_else(|| "deskport".to_owned());
    if !deskport_rdp::accounts::valid_name(&rdp_user) {
        return Err(UsageError(format!(
            "DESKPORT_RDP_USER {rdp_user:?}: an account name is 1-64 letters, digits or . _ -"
        ))
        .into());
    }
    state.rdp_user = Some(rdp_user.clone());
    let rdp_password = env("DESKPORT_RDP_PASSWORD")
        .or(state.rdp_password.clone())
        .unwrap_or_else(generate_password);
    if env("DESKPORT_RDP_PASSWORD").is_none() {
        state.rdp_password = Some(rdp_password.clone());
    }
    state.save(&dir)?;

    // The manager.
    let mut manager_settings = settings.manager.clone();
    manager_settings.data_dir = Some(dir.clone());
    manager_settings.listen = args.console;
    let manager_config = crate::cmd::manager::config(&manager_settings, Some(rdp_user.clone()))?;
    let store = deskport_manager::open_store(&manager_config).await?;
    deskport_manager::bootstrap(&*store, Some(admin_password.clone())).await?;
    let listener = tokio::net::TcpListener::bind(args.console)
        .await
        .with_context(|| format!("listen on {} (pass --console ADDR:PORT)", args.console))?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = deskport_manager::app(
        deskport_manager::state(store, &manager_config),
        manager_config.body_limit,
    );
    let mut manager = tokio::spawn(deskport_manager::serve(
        listener,
        app,
        crate::cmd::firewall::shutdown_signal(),
    ));

    // The CLI's token, kept across runs while it works.
    let token = match &state.api_token {
        Some(t)
            if Client::new(&url, Some(t.clone()))
                .map_err(refused)?
                .projects()
                .await
                .is_ok() =>
        {
            t.clone()
        }
        _ => {
            Client::new(&url, None)
                .map_err(refused)?
                .token(&TokenRequest {
                    username: "admin".to_owned(),
                    password: admin_password.clone(),
                    name: Some("deskport up".to_owned()),
                })
                .await
                .map_err(refused)?
                .token
        }
    };
    state.api_token = Some(token.clone());
    state.save(&dir)?;
    crate::cmd::remote::write_cli_config(&file.path, &url, &token)?;
    let admin = Client::new(&url, Some(token)).map_err(refused)?;

    // The instance, in the default group (RDP refused until a rule allows it), Remote Desktop on.
    let existing = admin
        .instances()
        .await
        .map_err(refused)?
        .instances
        .into_iter()
        .find(|i| i.name == INSTANCE);
    let agent_token = match (existing, state.agent_token.clone()) {
        (Some(_), Some(token)) => token,
        (Some(_), None) => anyhow::bail!(
            "the instance {INSTANCE:?} exists but its agent token is not in {}; remove the instance \
             (`deskport instance delete {INSTANCE}`) and run `deskport up` again",
            UpState::path(&dir).display()
        ),
        (None, _) => {
            let created = admin
                .create_instance(CreateInstance {
                    name: INSTANCE.to_owned(),
                    public_address: public.to_string(),
                    internal_address: Some(internal.to_string()),
                    security_groups: Vec::new(),
                    project_id: None,
                })
                .await
                .map_err(refused)?;
            admin
                .set_remote_desktop(
                    created.instance.id,
                    UpdateRemoteDesktop {
                        enabled: Some(true),
                        nla_only: Some(true),
                    },
                )
                .await
                .map_err(refused)?;
            state.agent_token = Some(created.agent_token.clone());
            state.save(&dir)?;
            created.agent_token
        }
    };

    // The instance's RDP account.
    let rdp_dir = dir.join("rdp");
    std::fs::create_dir_all(&rdp_dir)?;
    let accounts_path = Accounts::path(&rdp_dir);
    let mut accounts = Accounts::load(&accounts_path)?;
    if accounts.get(&rdp_user).is_none() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        accounts.add(&rdp_user, &rdp_password, now)?;
    } else {
        accounts.set_password(&rdp_user, &rdp_password)?;
    }
    accounts.save(&accounts_path)?;
    let fingerprint = deskport_rdp::tls::load_or_create(&rdp_dir.join("tls"))?.fingerprint;

    // The desktop and its RDP server, following the manager's switches.
    let nft = args.firewall == BackendKind::Nft;
    let desktop = Desktop::start(args.desktop, &dir.join("desktop.log"))?;
    let mut rdp_settings = settings.rdp_server.clone();
    // (With nftables nothing forwards: the RDP server is on the public port.)
    rdp_settings.listen = if nft { public } else { internal };
    rdp_settings.data_dir = Some(rdp_dir.clone());
    rdp_settings.display = Some(desktop.display.clone());
    rdp_settings.manager = Some(url.clone());
    rdp_settings.token = Some(agent_token.clone());
    let flags = crate::config::flag_layer("rdp_server", &serde_json::json!({}))?;
    let mut rdp = tokio::spawn(crate::cmd::rdp_server::serve(
        rdp_settings,
        rdp_dir,
        file.clone(),
        flags,
    ));

    // The firewall publishing the instance.
    let mut firewall_settings = settings.firewall.clone();
    firewall_settings.backend = args.firewall;
    if nft {
        firewall_settings.placement = crate::cmd::firewall::PlacementKind::Host;
        firewall_settings.host_ports = vec![args.rdp_port];
    }
    let table = firewall_settings.table.clone();
    firewall_settings.manager = Some(url.clone());
    firewall_settings.token = Some(agent_token.clone());
    let source = Source::Manager {
        client: Client::new(&url, Some(agent_token)).map_err(refused)?,
        state: dir.join("firewall-policy.json"),
    };
    let mut firewall =
        tokio::spawn(
            async move { crate::cmd::firewall::run_agent(&firewall_settings, source).await },
        );

    // Ready when the firewall publishes the port (gateway), or when the RDP server listens and
    // the nftables table is in force (nft: connections are refused until a rule allows them).
    let ready = async {
        loop {
            let up = if nft {
                std::net::TcpListener::bind(public).is_err()
                    && tokio::process::Command::new("nft")
                        .args(["list", "table", "inet", &table])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await
                        .is_ok_and(|s| s.success())
            } else {
                tokio::net::TcpStream::connect(public).await.is_ok()
            };
            if up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(20), ready) => {}
        r = &mut firewall => return Err(ended("the firewall", r)),
        r = &mut rdp => return Err(ended("the RDP server", r)),
        r = &mut manager => return Err(ended("the manager", r)),
    }

    let user = &rdp_user;
    println!(
        "\
deskport is up (state in {dir}).

  console:        {url}/      admin / {admin_password}   (API: {url}/api/v1)
  instance:       {INSTANCE}: RDP at {public} ({path}), desktop on display {display}
  RDP account:    {user} / {rdp_password}
  certificate:    SHA256 {fingerprint}

Remote Desktop is on, NLA only, but the instance's security group `default` does not allow
RDP yet: connections to {public} are refused. Allow your address (the article's step 1):

  deskport rule add --group default {rule} --cidr 127.0.0.1/32

then connect:

  deskport connect {public} -u {user}
  xfreerdp /v:{public} /u:{user} /sec:nla /cert:tofu
  rdesktop -u {user} {public}        (after: deskport instance rdp {INSTANCE} --no-nla-only)

Ctrl-C stops everything; `deskport up` again keeps all state.",
        dir = dir.display(),
        display = desktop.display,
        path = if nft {
            format!("filtered by nftables: table inet {table}")
        } else {
            format!("forwarded to {internal}")
        },
        rule = if args.rdp_port == 3389 {
            "--template rdp".to_owned()
        } else {
            format!("--protocol tcp --port {}", args.rdp_port)
        },
    );

    let result = tokio::select! {
        r = &mut firewall => ended_ok("the firewall", r),
        r = &mut rdp => ended_ok("the RDP server", r),
        r = &mut manager => ended_ok("the manager", r),
    };
    // One part stopped (Ctrl-C stops them all at once): wait briefly for the others.
    let rest = async {
        // (The one that ended was polled to completion above: await only the others.)
        for handle in [firewall, rdp, manager] {
            if !handle.is_finished() {
                let _ = handle.await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), rest).await;
    drop(desktop);
    if nft {
        // The table lives as long as `up` (a standalone `deskport firewall` keeps enforcing
        // after it stops; here the instance stopped too, and a later `up` with the gateway
        // must not find its port still filtered).
        let removed = tokio::process::Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .stderr(Stdio::null())
            .status()
            .await;
        if !removed.is_ok_and(|s| s.success()) {
            tracing::warn!(
                table,
                "Could not remove the nftables table; `nft delete table inet {table}` does"
            );
        }
    }
    result
}

fn ended(what: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped during start-up"),
        Ok(Err(e)) => e.context(format!("{what} failed")),
        Err(e) => anyhow::anyhow!("{what} failed: {e}"),
    }
}

fn ended_ok(
    what: &str,
    r: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.context(format!("{what} failed"))),
        Err(e) => Err(anyhow::anyhow!("{what} failed: {e}")),
    }
}
