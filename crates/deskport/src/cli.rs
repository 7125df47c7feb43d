//! The command line: global flags, the subcommand list, and the exit-status contract
//! (0 success, 1 refused or failed, 2 usage or configuration error).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::cmd;
use crate::config::{self, ConfigFile, LogFormat};

/// deskport: secure remote-desktop access to cloud instances.
///
/// Security groups and the firewall that enforces them, the manager (web console, HTTP API),
/// the RDP server for Linux instances and an RDP client, in one binary.
///
/// Configuration is read from (lowest precedence first) built-in defaults, the config file
/// (--config, else $DESKPORT_CONFIG, else ~/.config/deskport/config.toml), environment
/// variables DESKPORT_<SECTION>__<KEY> (e.g. DESKPORT_LOG__FORMAT=json), and flags.
/// `RUST_LOG` overrides the log filter.
#[derive(Debug, Parser)]
#[command(
    name = "deskport",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file (must exist when given).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything on this machine: the manager, one instance with a virtual desktop and its
    /// RDP server, and the firewall publishing it on 127.0.0.1.
    ///
    /// Prints the manager's URL, the credentials (DESKPORT_ADMIN_PASSWORD, DESKPORT_RDP_USER
    /// and DESKPORT_RDP_PASSWORD replace the generated ones), the certificate's fingerprint and
    /// the connect commands, and writes the admin's API token into the CLI config so that
    /// `deskport rule add ...` works at once. Ctrl-C stops everything; running it again keeps
    /// all state.
    Up(cmd::up::Args),
    /// Show the effective configuration and where it is read from.
    Config(cmd::config::Args),
    /// Enforce security groups (nftables or the userspace gateway).
    ///
    /// The agent reads a policy document (security groups and the instances they protect),
    /// applies it with the chosen backend, and re-applies it whenever the file changes. A file
    /// that cannot be read or parsed changes nothing: the previous policy stays in force. With
    /// the nft backend the ruleset stays in the kernel after the agent stops (fail closed).
    Firewall(cmd::firewall::Args),
    /// Run the manager: the console, the HTTP API and the agents' feed, over HTTPS.
    ///
    /// On first start it creates the project `default` and the user `admin`, whose password is
    /// DESKPORT_ADMIN_PASSWORD or generated and printed once. The HTTPS certificate is made on
    /// first start and kept in the data directory (or given with --tls-cert/--tls-key); its
    /// SHA-256 fingerprint is printed at start for the CLI and the agents to pin. Plain HTTP
    /// only with --insecure-http and on a loopback address.
    Manager(cmd::manager::Args),
    /// Run the RDP server of this instance, or manage its accounts (`user add|del|passwd|list`).
    ///
    /// Clients log on with an account of deskport's own store (per-user NLA). The two switches
    /// of the article (allow remote connections; NLA only) come from the configuration or the
    /// manager and apply without a restart. The TLS certificate is made on first start and kept.
    RdpServer(cmd::rdp_server::Args),
    /// Run an RD Gateway on its own host (a bastion): RDP through HTTPS to the instances'
    /// RDP services, for tokens the manager grants.
    ///
    /// xfreerdp (/g:HOST:PORT /gat:TOKEN), mstsc and `deskport connect --gateway` reach an
    /// instance through it with a token from `deskport instance rdp-token NAME`; the manager
    /// (asked with an administrator's API token) decides every tunnel, cuts live ones when
    /// access changes, and audits them. The manager's own HTTPS listener serves the same
    /// gateway at /remoteDesktopGateway/.
    RdGateway(cmd::rd_gateway::Args),
    /// Connect to a remote desktop (RDP): a window, or a screenshot with --screenshot.
    ///
    /// Offers NLA and TLS (--sec), checks the server's certificate against the known-hosts file
    /// (the first one seen for HOST:PORT is remembered, a changed one is refused, like ssh) or
    /// a pinned fingerprint, and says plainly why a connection failed.
    Connect(cmd::connect::Args),
    /// Log in to a manager and keep its URL and an API token in the CLI config.
    Login(cmd::remote::LoginArgs),
    /// Security groups: list, create, delete.
    Sg(cmd::remote::SgArgs),
    /// Security-group rules: list, add, delete.
    Rule(cmd::remote::RuleArgs),
    /// Instances: list, show, create, delete, Remote Desktop switches, groups.
    Instance(cmd::remote::InstanceArgs),
    /// Projects you belong to.
    Project(cmd::remote::ProjectArgs),
    /// Rule templates (RDP, SSH, HTTP, …).
    Template(cmd::remote::TemplateArgs),
    /// The audit log.
    Audit(cmd::remote::AuditArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or PowerShell.
    ///
    /// bash: `deskport completions bash > ~/.local/share/bash-completion/completions/deskport`
    /// (the Debian package installs the scripts for bash, zsh and fish).
    Completions(cmd::docs::CompletionsArgs),
    /// Write the man pages (one per command and subcommand) into a directory.
    #[command(hide = true)]
    Man(cmd::docs::ManArgs),
    /// Hold a PAM session for the RDP server (internal: it starts this for each virtual
    /// desktop and ends it by closing stdin).
    #[command(hide = true)]
    PamSession(PamSessionArgs),
}

#[derive(Debug, clap::Args)]
pub struct PamSessionArgs {
    /// The client's address (PAM_RHOST).
    #[arg(long)]
    remote_host: Option<String>,
    service: String,
    user: String,
    display: String,
}

/// The `[log]` section's flags.
#[derive(Debug, Serialize)]
struct LogFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
}

/// A usage or configuration error: exit status 2 rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Made from the command line's definitions alone: no configuration read.
    match &cli.command {
        Command::Completions(args) => return cmd::docs::completions(args),
        Command::Man(args) => return cmd::docs::man(args),
        Command::PamSession(args) => return pam_session(args),
        _ => {}
    }
    let file = ConfigFile::locate(cli.config.as_deref()).map_err(usage)?;
    let mut flags = vec![config::flag_layer(
        "log",
        &LogFlags {
            format: cli.log_format,
        },
    )?];
    match &cli.command {
        Command::Firewall(args) => flags.push(config::flag_layer("firewall", args)?),
        Command::Manager(args) => flags.push(config::flag_layer("manager", args)?),
        Command::RdpServer(args) => flags.push(config::flag_layer("rdp_server", args)?),
        Command::RdGateway(args) => flags.push(config::flag_layer("rd_gateway", args)?),
        _ => {}
    }
    let mut settings = config::load(&file, &flags).map_err(usage)?;
    // An interactive client keeps stderr for what the user must know: the library's progress
    // lines only with a filter the user chose.
    if matches!(cli.command, Command::Connect(_))
        && settings.log.filter == config::LogSettings::default().filter
    {
        settings.log.filter = "warn".to_owned();
    }
    crate::logging::init(&settings.log).map_err(usage)?;
    match cli.command {
        Command::Config(args) => cmd::config::exec(args, &file, &settings),
        Command::Firewall(args) => cmd::firewall::exec(args, &settings.firewall),
        Command::Manager(args) => cmd::manager::exec(args, &settings.manager),
        Command::RdpServer(args) => cmd::rdp_server::exec(args, &settings.rdp_server, &file),
        Command::Up(args) => cmd::up::exec(args, &settings, &file),
        Command::RdGateway(_) => cmd::rd_gateway::exec(&settings.rd_gateway),
        Command::Connect(args) => cmd::connect::exec(args),
        Command::Login(args) => cmd::remote::login(args, &file, &settings.cli),
        Command::Sg(args) => cmd::remote::sg(args, &settings.cli),
        Command::Rule(args) => cmd::remote::rule(args, &settings.cli),
        Command::Instance(args) => cmd::remote::instance(args, &settings.cli),
        Command::Project(args) => cmd::remote::project(args, &settings.cli),
        Command::Template(args) => cmd::remote::template(args, &settings.cli),
        Command::Audit(args) => cmd::remote::audit(args, &settings.cli),
        Command::Completions(args) => cmd::docs::completions(&args),
        Command::Man(args) => cmd::docs::man(&args),
        Command::PamSession(_) => unreachable!("answered before the configuration is read"),
    }
}

/// `deskport pam-session`: the answers go to the original stdout, kept apart; what PAM modules
/// and their children print (on fd 1) goes to stderr instead, so it cannot pass for one.
fn pam_session(args: &PamSessionArgs) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let answers = std::io::stdout().as_fd().try_clone_to_owned()?;
    nix::unistd::dup2(2, 1)?;
    deskport_pam::serve_helper(
        &args.service,
        &args.user,
        &args.display,
        args.remote_host.as_deref(),
        &mut std::io::stdin().lock(),
        &mut std::fs::File::from(answers),
    )?;
    Ok(())
}

fn usage(err: anyhow::Error) -> anyhow::Error {
    UsageError(format!("{err:#}")).into()
}

/// The process exit status for a failed command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        2
    } else {
        1
    }
}
