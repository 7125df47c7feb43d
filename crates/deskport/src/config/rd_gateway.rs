//! `[rd_gateway]`: the settings of `deskport rd-gateway`, an RD Gateway on its own host (a
//! bastion) that asks the manager who may reach what.

use std::net::SocketAddr;
use std::path::PathBuf;

use deskport_manager::Tls;
use serde::{Deserialize, Serialize};

use crate::cli::UsageError;

/// `[rd_gateway]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdGatewaySettings {
    /// The HTTPS address clients reach (their `/g:HOST:PORT`).
    pub listen: SocketAddr,
    /// The manager (or several replicas, separated by commas) that checks tokens.
    pub manager: Option<String>,
    /// Trust `https://` managers only with this certificate (`SHA256:ab:cd:…`).
    pub manager_fingerprint: Option<String>,
    /// Trust `https://` managers whose certificate this CA (PEM file) signed.
    pub manager_ca_file: Option<PathBuf>,
    /// An administrator's API token (`deskport login` writes one to the CLI config).
    pub token: Option<String>,
    /// Where the gateway's self-signed certificate is kept; default `~/.local/share/deskport`
    /// (`rd-gateway/tls/`).
    pub data_dir: Option<PathBuf>,
    /// The certificate chain (PEM) to serve, with `tls_key`; default: a self-signed one made
    /// on first start.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Tunnels at once (open or being set up), 1 to 100000.
    pub max_tunnels: usize,
}

impl Default for RdGatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            manager: None,
            manager_fingerprint: None,
            manager_ca_file: None,
            token: None,
            data_dir: None,
            tls_cert: None,
            tls_key: None,
            max_tunnels: deskport_gateway::Limits::default().max_tunnels,
        }
    }
}

/// What `deskport rd-gateway` runs with, checked.
#[derive(Debug, Clone)]
pub struct RdGatewayConfig {
    pub listen: SocketAddr,
    pub managers: Vec<String>,
    pub trust: Option<deskport_api::ServerTrust>,
    pub token: String,
    pub data_dir: PathBuf,
    pub tls: Tls,
    pub limits: deskport_gateway::Limits,
}

impl RdGatewaySettings {
    pub fn config(&self) -> anyhow::Result<RdGatewayConfig> {
        let Some(urls) = &self.manager else {
            return Err(UsageError(
                "deskport rd-gateway needs --manager URL[,URL...] (the manager that checks tokens)"
                    .to_owned(),
            )
            .into());
        };
        let managers = super::firewall::manager_urls(urls)?;
        let Some(token) = self.token.clone().filter(|t| !t.is_empty()) else {
            return Err(UsageError(
                "deskport rd-gateway needs --token T (an administrator's API token)".to_owned(),
            )
            .into());
        };
        let trust = super::firewall::manager_trust(
            &managers,
            self.manager_fingerprint.as_deref(),
            self.manager_ca_file.as_ref(),
        )?;
        if !(1..=100_000).contains(&self.max_tunnels) {
            return Err(UsageError(format!(
                "[rd_gateway] max_tunnels is {}: it must be 1 to 100000",
                self.max_tunnels
            ))
            .into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => Tls::SelfSigned,
            (Some(cert), Some(key)) => Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key (its private key)"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (its certificate)"),
        };
        Ok(RdGatewayConfig {
            listen: self.listen,
            managers,
            trust,
            token,
            data_dir: match &self.data_dir {
                Some(d) => d.clone(),
                None => super::default_data_dir()?.join("rd-gateway"),
            },
            tls,
            limits: deskport_gateway::Limits {
                max_tunnels: self.max_tunnels,
                ..deskport_gateway::Limits::default()
            },
        })
    }
}
