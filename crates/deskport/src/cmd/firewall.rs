//! `deskport firewall`: the enforcement agent, with the nftables or the gateway backend. Flags
//! become the `[firewall]` settings layer (`config::firewall`); the agent is
//! `deskport_firewall::Agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::UsageError;
use crate::config::firewall::{BackendKind, DenyKind, FirewallSettings, PlacementKind};

/// The agent reads a policy document (security groups and the instances they protect), applies
/// it with the chosen backend, and re-applies it whenever the file changes. A file that cannot
/// be read or parsed changes nothing: the previous policy stays in force. With the nft backend
/// the ruleset stays in the kernel after the agent stops (fail closed).
///
/// Flags that are settings are serialized as the `[firewall]` layer of the configuration.
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// Enforcement backend.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<BackendKind>,
    /// Policy document (TOML, or JSON for *.json).
    #[arg(long, value_name = "FILE", conflicts_with = "manager")]
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    /// Follow this manager's agent feed (e.g. https://127.0.0.1:8080) instead of a file; several
    /// replicas separated by commas are followed in turn (the next when one stops answering).
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
    /// The agent token of the instance (printed by `deskport instance create`).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Where the last policy received from the manager is kept.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<PathBuf>,
    /// nft: where the table hooks in.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<PlacementKind>,
    /// nft: table name in the inet family.
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    /// nft: what happens to denied new connections.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    deny: Option<DenyKind>,
    /// nft: log denied connections (rate-limited).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    log_denied: bool,
    /// Keep live connections when a rule that allowed them is removed.
    #[arg(long)]
    #[serde(
        rename = "cut_revoked",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "as_false"
    )]
    no_cut_revoked: bool,
    /// Milliseconds between checks of the policy file.
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
    /// gateway: most live connections and flows.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// gateway: most live connections and flows of one source address.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_source: Option<usize>,
    /// gateway: close TCP connections idle for this many seconds.
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_secs: Option<u64>,
    /// Serve /metrics and /healthz on ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Validate the policy (and, for nft, ask the kernel with `nft --check`), change nothing.
    #[arg(long)]
    #[serde(skip)]
    dry_run: bool,
    /// nft: print the generated ruleset and exit.
    #[arg(long)]
    #[serde(skip)]
    print: bool,
    /// nft: apply once and exit instead of watching the file.
    #[arg(long)]
    #[serde(skip)]
    once: bool,
}

fn as_false<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(false)
}

pub fn exec(args: Args, settings: &FirewallSettings) -> anyhow::Result<()> {
    settings.check()?;
    let source = settings.source()?;
    let policy_file = match &source {
        deskport_firewall::Source::File(path) => Some(path.clone()),
        deskport_firewall::Source::Manager { .. } => None,
    };
    if (args.print || args.once || args.dry_run) && policy_file.is_none() {
        return Err(
            UsageError("--print, --once and --dry-run read a --policy file".to_owned()).into(),
        );
    }
    if (args.print || args.once) && settings.backend != BackendKind::Nft {
        return Err(UsageError("--print and --once are for --backend nft".to_owned()).into());
    }
    crate::runtime::block_on(async {
        match policy_file {
            Some(path) if args.print || args.dry_run => check(&args, settings, &path).await,
            Some(path) if args.once => {
                let loaded = deskport_firewall::agent::load_file(&path)?;
                settings.backend().apply(&loaded).await?;
                Ok(())
            }
            _ => {
                deskport_firewall::run(settings.agent(source), crate::runtime::shutdown_signal())
                    .await?;
                Ok(())
            }
        }
    })
}

/// `--print` (the ruleset) and `--dry-run` (the policy, and the kernel's opinion of the
/// ruleset for nft).
async fn check(
    args: &Args,
    settings: &FirewallSettings,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let nft = settings.nft_backend();
    let loaded = deskport_firewall::agent::load_file(path)?;
    let rules: usize = loaded.policy.groups.iter().map(|g| g.rules.len()).sum();
    if args.print {
        print!("{}", nft.ruleset(&loaded.policy, loaded.revision));
    }
    if args.dry_run {
        let nft_backend = settings.backend == BackendKind::Nft;
        if nft_backend {
            nft.check(&nft.ruleset(&loaded.policy, loaded.revision))
                .await?;
        }
        eprintln!(
            "policy {} is valid: revision {}, {} groups, {rules} rules, {} instances{}",
            path.display(),
            loaded.revision,
            loaded.policy.groups.len(),
            loaded.policy.members.len(),
            if nft_backend {
                "; nft accepts the ruleset"
            } else {
                ""
            }
        );
    }
    Ok(())
}
