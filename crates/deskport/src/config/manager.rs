//! `[manager]`: the settings of `deskport manager` (and of the manager `deskport up` runs).

use std::net::SocketAddr;
use std::path::PathBuf;

use deskport_manager::{ManagerConfig, Tls};
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
    /// Another database: `sqlite:PATH`, or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (several managers may share one PostgreSQL database).
    pub db: Option<String>,
    /// Security groups per project at most.
    pub quota_groups: usize,
    /// Security-group rules per project at most.
    pub quota_rules: usize,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
    /// Serve HTTPS (the default). `false`: plain HTTP, refused unless `listen` is loopback.
    pub tls: bool,
    /// The HTTPS certificate chain (PEM) to serve, with `tls_key`; default: a self-signed
    /// one made on first start in `DATA_DIR/tls/`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve the RD Gateway (RDP through HTTPS, at `/remoteDesktopGateway/`) on the HTTPS
    /// listener.
    pub rd_gateway: bool,
    /// RD Gateway tunnels at once (open or being set up), 1 to 100000.
    pub rd_gateway_max_tunnels: usize,
    /// Seconds from a connection's start (or its last response) to a request's complete
    /// header, 1 to 300; a half-sent request or an idle keep-alive connection is then closed.
    pub header_timeout_secs: u64,
    /// Connections from one address at once (agents behind one NAT count together), 1 to
    /// 1000000.
    pub max_connections_per_source: usize,
    /// Connections at once in all, 1 to 1000000 (mind the open-files limit).
    pub max_connections: usize,
    /// Seconds a request body may pause between its pieces, 1 to 300 (the RD Gateway's
    /// tunnels excepted).
    pub body_timeout_secs: u64,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        let quota = Quota::default();
        let http = deskport_manager::HttpLimits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: None,
            db: None,
            quota_groups: quota.groups,
            quota_rules: quota.rules,
            body_limit: 64 * 1024,
            tls: true,
            tls_cert: None,
            tls_key: None,
            rd_gateway: true,
            rd_gateway_max_tunnels: deskport_gateway::Limits::default().max_tunnels,
            header_timeout_secs: http.header_timeout.as_secs(),
            max_connections_per_source: http.per_source,
            max_connections: http.max_connections,
            body_timeout_secs: http.body_timeout.as_secs(),
        }
    }
}

impl ManagerSettings {
    /// The manager's configuration; `rdp_user` is the RDP account shown in connect commands.
    pub fn config(&self, rdp_user: Option<String>) -> anyhow::Result<ManagerConfig> {
        let tls = match (self.tls, &self.tls_cert, &self.tls_key) {
            (true, None, None) => Tls::SelfSigned,
            (true, Some(cert), Some(key)) => Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (true, Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key (its private key)"),
            (true, None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (its certificate)"),
            (false, None, None) => Tls::PlainHttp,
            (false, _, _) => anyhow::bail!(
                "plain HTTP (--insecure-http, [manager] tls = false) and a certificate                  (--tls-cert, --tls-key) contradict each other"
            ),
        };
        if !(1..=100_000).contains(&self.rd_gateway_max_tunnels) {
            anyhow::bail!(
                "[manager] rd_gateway_max_tunnels is {}: it must be 1 to 100000",
                self.rd_gateway_max_tunnels
            );
        }
        let rd_gateway = self.rd_gateway.then(|| deskport_gateway::Limits {
            max_tunnels: self.rd_gateway_max_tunnels,
            ..deskport_gateway::Limits::default()
        });
        for (key, value, max) in [
            (
                "header_timeout_secs",
                self.header_timeout_secs as usize,
                300,
            ),
            (
                "max_connections_per_source",
                self.max_connections_per_source,
                1_000_000,
            ),
            ("max_connections", self.max_connections, 1_000_000),
        ] {
            if !(1..=max).contains(&value) {
                anyhow::bail!("[manager] {key} is {value}: it must be 1 to {max}");
            }
        }
        let http = deskport_manager::HttpLimits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            per_source: self.max_connections_per_source,
            max_connections: self.max_connections,
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
        };
        Ok(ManagerConfig {
            http,
            rd_gateway,
            data_dir: match &self.data_dir {
                Some(d) => d.clone(),
                None => super::default_data_dir()?,
            },
            db: self.db.clone(),
            quota: Quota {
                groups: self.quota_groups,
                rules: self.quota_rules,
            },
            rdp_user,
            body_limit: self.body_limit,
            tls,
        })
    }
}
