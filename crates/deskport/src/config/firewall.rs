//! `[firewall]`: the settings of `deskport firewall` (and of the firewall `deskport up` runs),
//! and what they make of `deskport_firewall`'s configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use deskport_firewall::{AgentConfig, Backend, Gateway, GatewayConfig, NftBackend, NftConfig};
use deskport_policy::nft::{Deny, Options, Placement};
use serde::{Deserialize, Serialize};

use crate::cli::UsageError;

/// `[firewall]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSettings {
    /// `gateway` (userspace, no privileges) or `nft` (nftables, needs CAP_NET_ADMIN).
    pub backend: BackendKind,
    /// The policy document to enforce (TOML, or JSON when the name ends in `.json`).
    pub policy: Option<PathBuf>,
    /// Take the policy from the agent feed of this manager instead (with `token`); several
    /// replicas separated by commas are followed in turn, the next when one stops answering.
    pub manager: Option<String>,
    /// Trust `https://` managers only with this certificate (SHA-256 fingerprint,
    /// `SHA256:ab:cd:…`); every replica listed must serve it.
    pub manager_fingerprint: Option<String>,
    /// Trust `https://` managers whose certificate this CA (PEM file) signed.
    pub manager_ca_file: Option<PathBuf>,
    /// The instance's agent token (or a user's API token for a whole project).
    pub token: Option<String>,
    /// Where the last policy from the manager is kept (default in the data directory).
    pub state: Option<PathBuf>,
    /// nft: `forward` (a gateway in front of the instances) or `host` (on the instance).
    pub placement: PlacementKind,
    /// nft with `placement = "host"` on a machine whose addresses other services share: only
    /// connections to these ports are the instance's and judged by its groups (loopback
    /// included); empty: the whole host is the instance.
    pub host_ports: Vec<u16>,
    /// nft: the table name in the `inet` family.
    pub table: String,
    /// nft: `reject` (reset / ICMP prohibited) or `drop` for denied new connections.
    pub deny: DenyKind,
    /// nft: log denied new connections (rate-limited) to the kernel log.
    pub log_denied: bool,
    /// Close live connections that a policy change no longer allows.
    pub cut_revoked: bool,
    /// How often the policy file is checked for changes, in milliseconds.
    pub poll_interval_ms: u64,
    /// gateway: live connections and flows at most.
    pub max_connections: usize,
    /// gateway: live connections and flows of one source address at most (below
    /// `max_connections`: one address never takes them all).
    pub max_connections_per_source: usize,
    /// gateway: close a TCP connection idle for this many seconds.
    pub idle_timeout_secs: u64,
    /// gateway: forget a UDP flow idle for this many seconds.
    pub udp_idle_timeout_secs: u64,
    /// Serve `/metrics` and `/healthz` on this address.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for FirewallSettings {
    fn default() -> Self {
        let gateway = GatewayConfig::default();
        Self {
            backend: BackendKind::Gateway,
            policy: None,
            manager: None,
            token: None,
            manager_fingerprint: None,
            manager_ca_file: None,
            state: None,
            placement: PlacementKind::Forward,
            host_ports: Vec::new(),
            table: "deskport".to_owned(),
            deny: DenyKind::Reject,
            log_denied: false,
            cut_revoked: true,
            poll_interval_ms: 100,
            max_connections: gateway.max_connections,
            max_connections_per_source: gateway.max_connections_per_source,
            idle_timeout_secs: gateway.idle_timeout.as_secs(),
            udp_idle_timeout_secs: gateway.udp_idle_timeout.as_secs(),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Userspace TCP/UDP gateway: publishes each instance's services and decides every new
    /// connection; needs no privileges.
    Gateway,
    /// nftables: one `inet` table applied atomically; needs CAP_NET_ADMIN.
    Nft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    /// The forward path of a gateway in front of the instances.
    Forward,
    /// The instance's own input/output paths.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DenyKind {
    /// TCP reset or ICMP administratively prohibited: clients fail at once.
    Reject,
    /// Silently drop: clients time out.
    Drop,
}

/// `manager = "URL[,URL...]"` as a list; a usage error for an empty or non-HTTP entry.
pub fn manager_urls(text: &str) -> Result<Vec<String>, UsageError> {
    let urls: Vec<String> = text
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .collect();
    match urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        Some(bad) => Err(UsageError(format!(
            "manager URL {bad:?} is not an http:// or https:// URL (several are separated by commas)"
        ))),
        None => Ok(urls),
    }
}

/// How an agent trusts the `https://` managers among `urls`: the pinned `fingerprint` or the
/// CA file. An `https://` URL without either, or a malformed fingerprint, is an error (an
/// agent has no one to ask whether a first certificate is the right one).
pub fn manager_trust(
    urls: &[String],
    fingerprint: Option<&str>,
    ca_file: Option<&PathBuf>,
) -> anyhow::Result<Option<deskport_api::ServerTrust>> {
    use deskport_api::ServerTrust;
    let trust = match (fingerprint, ca_file) {
        (Some(fp), None) => {
            Some(ServerTrust::pin(fp).map_err(|e| anyhow::anyhow!("--manager-fingerprint: {e}"))?)
        }
        (None, Some(ca)) => Some(ServerTrust::CaFile(ca.clone())),
        (None, None) => None,
        (Some(_), Some(_)) => anyhow::bail!(
            "give either --manager-fingerprint or --manager-ca-file (manager_fingerprint or \
             manager_ca_file), not both"
        ),
    };
    if trust.is_none() {
        if let Some(url) = urls.iter().find(|u| u.starts_with("https://")) {
            anyhow::bail!(
                "cannot check the certificate of the manager at {url}: give \
                 --manager-fingerprint SHA256:… (as the manager prints it) or \
                 --manager-ca-file FILE"
            );
        }
    }
    Ok(trust)
}

/// One address's share of `all` connections (`key = share`): 1 to `all - 1`, so that one
/// address cannot take every connection.
pub fn check_share(key: &str, share: usize, all: usize) -> Result<(), UsageError> {
    if share == 0 || share >= all.max(1) {
        return Err(UsageError(format!(
            "{key} is {share}: it must be 1 to {} (less than the limit of all connections, {all}, \
             so that one address cannot take every connection)",
            all.saturating_sub(1)
        )));
    }
    Ok(())
}

impl FirewallSettings {
    /// Checks the combination of settings (usage errors, exit status 2).
    pub fn check(&self) -> Result<(), UsageError> {
        if !self.host_ports.is_empty()
            && (self.backend != BackendKind::Nft || self.placement != PlacementKind::Host)
        {
            return Err(UsageError(
                "[firewall] host_ports is for backend = \"nft\" with placement = \"host\""
                    .to_owned(),
            ));
        }
        check_share(
            "[firewall] max_connections_per_source",
            self.max_connections_per_source,
            self.max_connections,
        )?;
        if self.host_ports.contains(&0) {
            return Err(UsageError(
                "[firewall] host_ports: 0 is not a port".to_owned(),
            ));
        }
        Ok(())
    }

    /// Where the policy comes from: the manager's feed (`state` defaults to the data
    /// directory's `firewall-policy.json`) or a file.
    pub fn source(&self) -> anyhow::Result<deskport_firewall::Source> {
        match (&self.manager, &self.policy) {
            (Some(urls), _) => {
                let Some(token) = self.token.clone() else {
                    return Err(UsageError(
                        "--manager needs --token (the instance's agent token)".to_owned(),
                    )
                    .into());
                };
                let state = match &self.state {
                    Some(p) => p.clone(),
                    None => super::default_data_dir()?.join("firewall-policy.json"),
                };
                let urls = manager_urls(urls)?;
                let trust = manager_trust(
                    &urls,
                    self.manager_fingerprint.as_deref(),
                    self.manager_ca_file.as_ref(),
                )?;
                Ok(deskport_firewall::Source::Manager {
                    urls,
                    token,
                    state,
                    trust,
                })
            }
            (None, Some(path)) => Ok(deskport_firewall::Source::File(path.clone())),
            (None, None) => Err(UsageError(
                "no policy to enforce: give --policy FILE or --manager URL --token T".to_owned(),
            )
            .into()),
        }
    }

    /// The nftables backend these settings describe.
    pub fn nft_backend(&self) -> NftBackend {
        NftBackend::new(NftConfig {
            options: Options {
                table: self.table.clone(),
                placement: match self.placement {
                    PlacementKind::Forward => Placement::Forward,
                    PlacementKind::Host => Placement::Host,
                },
                log_prefix: self.log_denied.then(|| "deskport ".to_owned()),
                deny: match self.deny {
                    DenyKind::Reject => Deny::Reject,
                    DenyKind::Drop => Deny::Drop,
                },
                only_ports: self.host_ports.clone(),
                ..Options::default()
            },
            cut_revoked: self.cut_revoked,
            ..NftConfig::default()
        })
    }

    /// The backend these settings choose.
    pub fn backend(&self) -> Backend {
        match self.backend {
            BackendKind::Nft => Backend::Nft(self.nft_backend()),
            BackendKind::Gateway => Backend::Gateway(Gateway::new(GatewayConfig {
                max_connections: self.max_connections,
                max_connections_per_source: self.max_connections_per_source,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
                udp_idle_timeout: Duration::from_secs(self.udp_idle_timeout_secs.max(1)),
                cut_revoked: self.cut_revoked,
                ..GatewayConfig::default()
            })),
        }
    }

    /// The agent these settings describe, enforcing `source`.
    pub fn agent(&self, source: deskport_firewall::Source) -> AgentConfig {
        AgentConfig {
            source,
            backend: self.backend(),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(10)),
            metrics_listen: self.metrics_listen,
            remove_on_stop: false,
        }
    }
}
