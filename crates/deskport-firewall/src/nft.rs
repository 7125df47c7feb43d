//! The nftables backend: compiles the policy (`deskport_policy::nft`), applies it with one
//! `nft -f` transaction, then deletes the tracked flows the new policy no longer allows.
//!
//! Atomicity is the kernel's: `nft -f` commits the whole file or nothing, so a failed apply
//! leaves the previous ruleset in force.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use deskport_policy::nft::{self, Options, Placement};
use deskport_policy::{Classifier, Direction, GroupId, Policy};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::conntrack::{self, Flow, FlowL4};

/// Configuration of the nftables backend.
#[derive(Debug, Clone)]
pub struct NftConfig {
    /// The `nft` program.
    pub nft: PathBuf,
    /// The `conntrack` program.
    pub conntrack: PathBuf,
    /// The `ss` program (host placement: aborts the local sockets of cut flows).
    pub ss: PathBuf,
    /// Table name, placement and logging of the generated ruleset.
    pub options: Options,
    /// Delete tracked flows that the new policy no longer allows (SPEC §1: the default).
    pub cut_revoked: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            nft: PathBuf::from("nft"),
            conntrack: PathBuf::from("conntrack"),
            ss: PathBuf::from("ss"),
            options: Options::default(),
            cut_revoked: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not run {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft refused the ruleset (the previous ruleset stays in force): {stderr}")]
    Refused { stderr: String },
    #[error("conntrack failed: {0}")]
    Conntrack(String),
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Time to compile the ruleset text.
    pub compile: Duration,
    /// Time `nft -f` took (the transaction).
    pub apply: Duration,
    /// Flows deleted because the new policy no longer allows them.
    pub flows_cut: usize,
    /// Size of the generated ruleset.
    pub ruleset_bytes: usize,
}

/// The nftables backend.
#[derive(Debug, Clone)]
pub struct NftBackend {
    config: NftConfig,
}

impl NftBackend {
    pub fn new(config: NftConfig) -> Self {
        Self { config }
    }

    /// The ruleset text for `policy` at `revision`.
    pub fn ruleset(&self, policy: &Policy, revision: u64) -> String {
        let options = Options {
            revision,
            ..self.config.options.clone()
        };
        nft::compile(policy, &options)
    }

    /// Dry run: asks the kernel whether it would accept `ruleset` (`nft --check`), changing
    /// nothing.
    pub async fn check(&self, ruleset: &str) -> Result<(), NftError> {
        self.run_nft(&["--check", "-f", "-"], ruleset).await
    }

    /// Applies `policy` atomically, then cuts the flows it revokes.
    pub async fn apply(&self, policy: &Policy, revision: u64) -> Result<ApplyReport, NftError> {
        let started = Instant::now();
        let ruleset = self.ruleset(policy, revision);
        let compile = started.elapsed();
        let started = Instant::now();
        self.run_nft(&["-f", "-"], &ruleset).await?;
        let apply = started.elapsed();
        let flows_cut = if self.config.cut_revoked {
            self.cut_revoked(policy).await?
        } else {
            0
        };
        Ok(ApplyReport {
            compile,
            apply,
            flows_cut,
            ruleset_bytes: ruleset.len(),
        })
    }

    /// The table as the kernel holds it now (`nft list table`), e.g. for `--print`.
    pub async fn list(&self) -> Result<String, NftError> {
        let output = Command::new(&self.config.nft)
            .args(["list", "table", "inet", &self.config.options.table])
            .output()
            .await
            .map_err(|source| self.spawn_error(&self.config.nft, source))?;
        if !output.status.success() {
            return Err(NftError::Refused {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Removes the table (nothing is enforced afterwards). A table that is not there is not an
    /// error.
    pub async fn remove(&self) -> Result<(), NftError> {
        if self.list().await.is_err() {
            return Ok(());
        }
        let table = format!("delete table inet {}\n", self.config.options.table);
        self.run_nft(&["-f", "-"], &table).await
    }

    async fn run_nft(&self, args: &[&str], input: &str) -> Result<(), NftError> {
        let mut child = Command::new(&self.config.nft)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(&self.config.nft, source))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| self.spawn_error(&self.config.nft, source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Refused {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Deletes every tracked flow to or from a protected instance that `policy` does not allow.
    async fn cut_revoked(&self, policy: &Policy) -> Result<usize, NftError> {
        // Which classifier judges traffic to/from each instance address.
        let mut by_groups: HashMap<Vec<GroupId>, usize> = HashMap::new();
        let mut classifiers = Vec::new();
        let mut owner: HashMap<IpAddr, usize> = HashMap::new();
        for m in &policy.members {
            let index = *by_groups.entry(m.groups.clone()).or_insert_with(|| {
                classifiers.push(Classifier::compile(policy, &m.groups));
                classifiers.len() - 1
            });
            for a in &m.addresses {
                owner.insert(*a, index);
            }
        }
        let only_ports = &self.config.options.only_ports;
        let allowed = |flow: &Flow| {
            // What the classifier of the instance at `address` (if it is one) says of the
            // flow's opening packet in `direction`.
            let judge = |address: &IpAddr, direction| {
                owner.get(address).is_none_or(|c| {
                    classifiers[*c]
                        .decide(&flow.opening_packet(direction))
                        .is_allow()
                })
            };
            if only_ports.is_empty() {
                return judge(&flow.dst, Direction::Ingress) && judge(&flow.src, Direction::Egress);
            }
            // Only connections to the instance's ports are judged, and only inbound.
            match flow.l4 {
                FlowL4::Ports { dport, .. } if only_ports.contains(&dport) => {
                    judge(&flow.dst, Direction::Ingress)
                }
                _ => true,
            }
        };
        let mut cut = 0;
        for family in ["ipv4", "ipv6"] {
            let output = Command::new(&self.config.conntrack)
                .args(["-L", "-f", family])
                .output()
                .await
                .map_err(|source| self.spawn_error(&self.config.conntrack, source))?;
            if !output.status.success() {
                return Err(NftError::Conntrack(
                    String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                ));
            }
            let (flows, skipped) = conntrack::parse_list(&String::from_utf8_lossy(&output.stdout));
            if skipped > 0 {
                tracing::warn!(skipped, "Unreadable conntrack lines skipped");
            }
            for flow in flows.iter().filter(|f| !allowed(f)) {
                let status = Command::new(&self.config.conntrack)
                    .args(flow.delete_args())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .map_err(|source| self.spawn_error(&self.config.conntrack, source))?;
                // On the instance itself the accepting socket is here: abort it, so that both
                // ends learn at once (a deleted conntrack entry alone waits for the next packet,
                // and the server's next packet would be taken for a new outgoing flow).
                if self.config.options.placement == Placement::Host {
                    if let Some(args) = flow.kill_socket_args() {
                        let killed = Command::new(&self.config.ss)
                            .args(&args)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .await;
                        if let Err(e) = killed {
                            tracing::warn!(error = %e, "Could not run ss to abort a revoked connection");
                        }
                    }
                }
                // A flow that ended meanwhile is not an error.
                if status.success() {
                    cut += 1;
                    tracing::info!(src = %flow.src, dst = %flow.dst, protocol = flow.protocol, "Revoked flow cut");
                }
            }
        }
        Ok(cut)
    }

    fn spawn_error(&self, program: &std::path::Path, source: std::io::Error) -> NftError {
        NftError::Spawn {
            program: program.display().to_string(),
            source,
        }
    }
}
