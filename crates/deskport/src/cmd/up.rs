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
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use deskport_api::v1::{CreateInstance, TokenRequest, UpdateRemoteDesktop};
use deskport_api::{Client, ServerTrust};
use deskport_desktop::launch::{self, XServer, XSession, XSessionSpec};
use deskport_rdp::accounts::Accounts;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cli::UsageError;
use crate::config::firewall::{BackendKind, PlacementKind};
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
        crate::config::write_private(
            &Self::path(dir),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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
        None => crate::config::default_data_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    crate::runtime::block_on(run(args, settings.clone(), file.clone(), dir))
}

fn refused(e: deskport_api::client::ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The credentials of this machine's deskport: the environment's, else those of an earlier
/// run, else generated (and remembered).
struct Credentials {
    admin_password: String,
    rdp_user: String,
    rdp_password: String,
}

impl Credentials {
    fn resolve(state: &mut UpState) -> anyhow::Result<Self> {
        let remembered = |name: &str, kept: &mut Option<String>| {
            let value = env(name)
                .or(kept.clone())
                .unwrap_or_else(deskport_manager::generate_password);
            if env(name).is_none() {
                *kept = Some(value.clone());
            }
            value
        };
        let admin_password = remembered("DESKPORT_ADMIN_PASSWORD", &mut state.admin_password);
        let rdp_password = remembered("DESKPORT_RDP_PASSWORD", &mut state.rdp_password);
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
        Ok(Self {
            admin_password,
            rdp_user,
            rdp_password,
        })
    }
}

/// Stops every part when one of them ends or a signal arrives.
#[derive(Clone)]
struct Stop(watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        let stop = Self(watch::channel(false).0);
        let on_signal = stop.clone();
        tokio::spawn(async move {
            crate::runtime::shutdown_signal().await;
            on_signal.now();
        });
        stop
    }

    fn now(&self) {
        self.0.send_replace(true);
    }

    /// Resolves when everything is to stop.
    fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
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
    let credentials = Credentials::resolve(&mut state)?;
    state.save(&dir)?;
    let stop = Stop::new();

    // The manager.
    let mut manager_settings = settings.manager.clone();
    manager_settings.data_dir = Some(dir.clone());
    // HTTPS, its certificate made on first start in the data directory (kept like the rest):
    // the CLI profile and the agents below pin its fingerprint.
    let manager_config = manager_settings.config(Some(credentials.rdp_user.clone()))?;
    deskport_manager::check_listen(args.console, &manager_config.tls)?;
    let manager =
        deskport_manager::Manager::open(&manager_config, Some(credentials.admin_password.clone()))
            .await?;
    let listener = tokio::net::TcpListener::bind(args.console)
        .await
        .with_context(|| format!("listen on {} (pass --console ADDR:PORT)", args.console))?;
    let manager_fingerprint = manager.tls().map(|t| t.fingerprint.clone());
    let trust = manager_fingerprint.clone().map(ServerTrust::Fingerprint);
    let scheme = if trust.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    let mut manager = tokio::spawn(manager.run(listener, stop.signal()));

    // The CLI's token (kept across runs while it works) and the instance.
    let token = api_token(&url, trust.as_ref(), &mut state, &credentials).await?;
    state.save(&dir)?;
    crate::config::cli::write_profile(
        &file.path,
        &url,
        &token,
        &crate::config::cli::ProfileTrust {
            fingerprint: manager_fingerprint.clone(),
            ca_file: None,
        },
    )?;
    let agent_token = instance(
        &url,
        trust.as_ref(),
        &token,
        &mut state,
        &dir,
        public,
        internal,
    )
    .await?;

    // The instance's RDP account, its desktop and its RDP server, following the manager's
    // switches. (With nftables nothing forwards: the RDP server is on the public port.)
    let nft = args.firewall == BackendKind::Nft;
    let rdp_dir = dir.join("rdp");
    rdp_account(&rdp_dir, &credentials)?;
    let commands = vec![launch::openbox_and_terminal()];
    let desktop = XSession::start(&XSessionSpec {
        x_server: XServer::Xvfb,
        size: args.desktop,
        commands: &commands,
        run_as: None,
        log: &dir.join("desktop.log"),
        account: None,
        // The RDP server shares (shadows) this display: sound is for virtual sessions.
        sound: false,
        pam_service: None,
        remote_host: None,
    })?;
    let mut rdp_settings = settings.rdp_server.clone();
    rdp_settings.listen = if nft { public } else { internal };
    rdp_settings.data_dir = Some(rdp_dir);
    rdp_settings.display = Some(desktop.display().to_owned());
    rdp_settings.manager = Some(url.clone());
    rdp_settings.token = Some(agent_token.clone());
    rdp_settings.manager_fingerprint = manager_fingerprint
        .as_ref()
        .map(|fp| format!("SHA256:{fp}"));
    rdp_settings.manager_ca_file = None;
    let rdp = deskport_rdp::RdpServer::open(rdp_settings.server()?.0)?;
    let fingerprint = rdp.fingerprint().to_owned();
    let mut rdp_bound = rdp.bound();
    let mut rdp = tokio::spawn(rdp.run(stop.signal()));

    // The firewall publishing the instance (nft: a table in host placement judging the public
    // port, removed when `up` stops, since the instance stops too).
    let mut firewall_settings = settings.firewall.clone();
    firewall_settings.backend = args.firewall;
    if nft {
        firewall_settings.placement = PlacementKind::Host;
        firewall_settings.host_ports = vec![args.rdp_port];
    }
    let table = firewall_settings.table.clone();
    let mut agent = firewall_settings.agent(deskport_firewall::Source::Manager {
        urls: vec![url.clone()],
        token: agent_token,
        state: dir.join("firewall-policy.json"),
        trust: trust.clone(),
    });
    agent.remove_on_stop = nft;
    let agent = deskport_firewall::Agent::new(agent);
    let mut enforced = agent.stats().revision();
    let mut firewall = tokio::spawn(agent.run(stop.signal()));

    // Ready when the firewall enforces the policy (the gateway then publishes the port; with
    // nft, connections are refused until a rule allows them) and, with nft, the RDP server
    // listens on the public port.
    let ready = async {
        let _ = enforced.wait_for(Option::is_some).await;
        if nft {
            let _ = rdp_bound.wait_for(Option::is_some).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(20), ready) => {}
        r = &mut firewall => return Err(ended("the firewall", r.map(|r| r.map_err(Into::into)))),
        r = &mut rdp => return Err(ended("the RDP server", r)),
        r = &mut manager => return Err(ended("the manager", r)),
    }

    let user = &credentials.rdp_user;
    let manager_certificate = match &manager_fingerprint {
        Some(fp) => format!(
            "  console cert:   SHA256:{fp} (self-signed; the CLI config and the agents pin it)\n"
        ),
        None => String::new(),
    };
    // Through the RD Gateway on the console's HTTPS port, 3389 left closed.
    let through_gateway = match (&manager_fingerprint, url.strip_prefix("https://")) {
        (Some(_), Some(gateway)) => format!(
            "\nOr through 443, with the RDP port left closed (the RD Gateway on the console's port):\n\n  \
             TOKEN=$(deskport instance rdp-token {INSTANCE} | tail -1)\n  \
             xfreerdp /v:{public} /g:{gateway} /gat:$TOKEN /gt:http /u:{user} /cert:tofu\n  \
             deskport connect {public} -u {user} --gateway {gateway} --gateway-token $TOKEN\n"
        ),
        _ => String::new(),
    };
    println!(
        "\
deskport is up (state in {dir}).

  console:        {url}/      admin / {admin_password}   (API: {url}/api/v1)
{manager_certificate}  instance:       {INSTANCE}: RDP at {public} ({path}), desktop on display {display}
  RDP account:    {user} / {rdp_password}
  certificate:    SHA256 {fingerprint}

Remote Desktop is on, NLA only, but the instance's security group `default` does not allow
RDP yet: connections to {public} are refused. Allow your address (the article's step 1):

  deskport rule add --group default {rule} --cidr 127.0.0.1/32

then connect:

  deskport connect {public} -u {user}
  xfreerdp /v:{public} /u:{user} /sec:nla /cert:tofu
  rdesktop -u {user} {public}        (after: deskport instance rdp {INSTANCE} --no-nla-only)
{through_gateway}
Ctrl-C stops everything; `deskport up` again keeps all state.",
        dir = dir.display(),
        admin_password = credentials.admin_password,
        rdp_password = credentials.rdp_password,
        display = desktop.display(),
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

    // One part stopped (a signal stops them all at once): stop the others and wait for them.
    let result = tokio::select! {
        r = &mut firewall => ended_ok("the firewall", r.map(|r| r.map_err(Into::into))),
        r = &mut rdp => ended_ok("the RDP server", r),
        r = &mut manager => ended_ok("the manager", r),
    };
    stop.now();
    let rest = async {
        if !firewall.is_finished() {
            let _ = firewall.await;
        }
        for handle in [rdp, manager] {
            if !handle.is_finished() {
                let _ = handle.await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), rest).await;
    drop(desktop);
    result
}

/// The admin's API token for the CLI: the one of an earlier run while it still works, else a
/// new one.
async fn api_token(
    url: &str,
    trust: Option<&ServerTrust>,
    state: &mut UpState,
    credentials: &Credentials,
) -> anyhow::Result<String> {
    if let Some(token) = &state.api_token {
        let client = Client::with_trust(url, Some(token.clone()), trust).map_err(refused)?;
        if client.projects().await.is_ok() {
            return Ok(token.clone());
        }
    }
    let token = Client::with_trust(url, None, trust)
        .map_err(refused)?
        .token(&TokenRequest {
            username: "admin".to_owned(),
            password: credentials.admin_password.clone(),
            name: Some("deskport up".to_owned()),
        })
        .await
        .map_err(refused)?
        .token;
    state.api_token = Some(token.clone());
    Ok(token)
}

/// The instance `up` runs, created through the API (so it is audited like any other) in the
/// default group (RDP refused until a rule allows it) with Remote Desktop on; its agent token.
async fn instance(
    url: &str,
    trust: Option<&ServerTrust>,
    token: &str,
    state: &mut UpState,
    dir: &Path,
    public: SocketAddr,
    internal: SocketAddr,
) -> anyhow::Result<String> {
    let admin = Client::with_trust(url, Some(token.to_owned()), trust).map_err(refused)?;
    let existing = admin
        .instances()
        .await
        .map_err(refused)?
        .instances
        .into_iter()
        .find(|i| i.name == INSTANCE);
    match (existing, state.agent_token.clone()) {
        (Some(_), Some(token)) => Ok(token),
        (Some(_), None) => anyhow::bail!(
            "the instance {INSTANCE:?} exists but its agent token is not in {}; remove the instance \
             (`deskport instance delete {INSTANCE}`) and run `deskport up` again",
            UpState::path(dir).display()
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
                        gateway: None,
                    },
                )
                .await
                .map_err(refused)?;
            state.agent_token = Some(created.agent_token.clone());
            state.save(dir)?;
            Ok(created.agent_token)
        }
    }
}

/// The RDP account of the user: added, or its password set to the current one.
fn rdp_account(rdp_dir: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    std::fs::create_dir_all(rdp_dir)?;
    let path = Accounts::path(rdp_dir);
    let mut accounts = Accounts::load(&path)?;
    let (user, password) = (&credentials.rdp_user, &credentials.rdp_password);
    if accounts.get(user).is_none() {
        accounts.add(user, password, deskport_policy::unix_ms(SystemTime::now()))?;
    } else {
        accounts.set_password(user, password)?;
    }
    accounts.save(&path)?;
    Ok(())
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
