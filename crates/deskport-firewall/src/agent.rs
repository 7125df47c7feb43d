//! The firewall agent: watches a policy source and keeps a backend enforcing it.
//!
//! - A source that cannot be read or parsed changes nothing: the last good policy stays in
//!   force and the error is logged (once per distinct error).
//! - At start, a source that gives no valid policy is an error: there is nothing to enforce.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deskport_api::PolicyDocument;
use deskport_policy::Policy;

use crate::gateway::Gateway;
use crate::nft::{NftBackend, NftError};

/// Where the desired state comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A policy document on disk (`.json`, or TOML otherwise), re-read when it changes.
    File(PathBuf),
    /// The manager's agent feed (long poll). The last document received is kept in `state`
    /// and enforced at start and whenever the manager cannot be reached.
    Manager {
        client: deskport_api::Client,
        state: PathBuf,
    },
}

/// The enforcement backend.
#[derive(Debug, Clone)]
pub enum Backend {
    Nft(NftBackend),
    Gateway(Gateway),
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}")]
    Invalid {
        path: PathBuf,
        source: deskport_api::DocError,
    },
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("cannot keep the last known policy in {path}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded policy and what identifies its version.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: Policy,
    pub revision: u64,
    /// The source text, to skip applying an unchanged policy.
    pub text: String,
}

/// A policy document received from the manager, validated.
pub fn load_doc(doc: &PolicyDocument, origin: &Path) -> Result<Loaded, AgentError> {
    let policy = doc.to_policy().map_err(|source| AgentError::Invalid {
        path: origin.to_owned(),
        source,
    })?;
    Ok(Loaded {
        policy,
        revision: doc.revision,
        text: doc.to_json(),
    })
}

/// Reads and validates a policy file (`.json` is JSON; anything else TOML).
pub fn load_file(path: &Path) -> Result<Loaded, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |source| AgentError::Invalid {
        path: path.to_owned(),
        source,
    };
    let doc = if path.extension().is_some_and(|e| e == "json") {
        PolicyDocument::from_json(&text)
    } else {
        PolicyDocument::from_toml(&text)
    }
    .map_err(invalid)?;
    let policy = doc.to_policy().map_err(invalid)?;
    Ok(Loaded {
        policy,
        revision: doc.revision,
        text,
    })
}

impl Backend {
    /// Makes `loaded` the policy in force.
    pub async fn apply(&self, loaded: &Loaded) -> Result<(), AgentError> {
        match self {
            Backend::Nft(nft) => {
                let report = nft.apply(&loaded.policy, loaded.revision).await?;
                tracing::info!(
                    revision = loaded.revision,
                    compile_ms = report.compile.as_secs_f64() * 1e3,
                    apply_ms = report.apply.as_secs_f64() * 1e3,
                    flows_cut = report.flows_cut,
                    bytes = report.ruleset_bytes,
                    "Policy applied (nftables)"
                );
            }
            Backend::Gateway(gw) => {
                let report = gw.apply(&loaded.policy, loaded.revision).await;
                tracing::info!(
                    revision = loaded.revision,
                    listening = ?report.listening,
                    revoked = report.revoked,
                    bind_errors = report.bind_errors.len(),
                    "Policy applied (gateway)"
                );
            }
        }
        Ok(())
    }
}

/// What the agent has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub revision: AtomicU64,
    pub applies: AtomicU64,
    pub failures: AtomicU64,
    /// Duration of the last successful apply, in microseconds.
    pub last_apply_us: AtomicU64,
}

impl AgentStats {
    /// The counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP deskport_agent_policy_revision The policy revision in force.\n\
             # TYPE deskport_agent_policy_revision gauge\n\
             deskport_agent_policy_revision {}\n\
             # HELP deskport_agent_applies_total Policies applied.\n\
             # TYPE deskport_agent_applies_total counter\n\
             deskport_agent_applies_total {}\n\
             # HELP deskport_agent_apply_failures_total Policies that could not be read or applied.\n\
             # TYPE deskport_agent_apply_failures_total counter\n\
             deskport_agent_apply_failures_total {}\n\
             # HELP deskport_agent_last_apply_seconds Duration of the last apply.\n\
             # TYPE deskport_agent_last_apply_seconds gauge\n\
             deskport_agent_last_apply_seconds {:.6}\n",
            get(&self.revision),
            get(&self.applies),
            get(&self.failures),
            get(&self.last_apply_us) as f64 / 1e6
        )
    }

    fn applied(&self, revision: u64, took: Duration) {
        self.revision.store(revision, Ordering::Relaxed);
        self.applies.fetch_add(1, Ordering::Relaxed);
        self.last_apply_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Watches `source` every `poll` and applies each new valid version, until `shutdown` resolves.
pub async fn run(
    source: Source,
    backend: Backend,
    poll: Duration,
    stats: &AgentStats,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let path = match source {
        Source::File(path) => path,
        Source::Manager { client, state } => {
            return run_manager(client, state, backend, stats, shutdown).await;
        }
    };
    // The stamp first, the contents second: a change made while the first policy is read and
    // applied changes the stamp, and is applied on the next poll.
    let mut stamp = file_stamp(&path);
    let mut current = load_file(&path)?;
    let started = Instant::now();
    backend.apply(&current).await?;
    stats.applied(current.revision, started.elapsed());
    let mut last_error: Option<String> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(poll) => {}
        }
        let now = file_stamp(&path);
        if now == stamp && last_error.is_none() {
            continue;
        }
        stamp = now;
        let result = match load_file(&path) {
            Ok(loaded) if loaded.text == current.text => Ok(()),
            Ok(loaded) => {
                let started = Instant::now();
                match backend.apply(&loaded).await {
                    Ok(()) => {
                        stats.applied(loaded.revision, started.elapsed());
                        current = loaded;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(&message) {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        error = %message,
                        revision = current.revision,
                        "New policy not applied; the previous one stays in force"
                    );
                }
                last_error = Some(message);
            }
        }
    }
}

/// Modification time, size and inode: a cheap change detector. The inode catches a file
/// replaced by rename within the file system's timestamp granularity.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The manager source: long-poll the feed, apply each new document, keep it on disk, report
/// the revision; enforce the kept document while the manager is unreachable.
async fn run_manager(
    client: deskport_api::Client,
    state: PathBuf,
    backend: Backend,
    stats: &AgentStats,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let mut current: Option<Loaded> = None;
    if state.exists() {
        match load_file(&state) {
            Ok(kept) => {
                let started = Instant::now();
                backend.apply(&kept).await?;
                stats.applied(kept.revision, started.elapsed());
                tracing::info!(
                    revision = kept.revision,
                    "Enforcing the last known policy until the manager answers"
                );
                current = Some(kept);
            }
            Err(e) => {
                tracing::warn!(error = %e, "The kept policy is unreadable; waiting for the manager")
            }
        }
    }
    let mut last_error: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let after = current.as_ref().map(|c| c.revision);
        let answer = tokio::select! {
            () = &mut shutdown => return Ok(()),
            answer = client.agent_policy(after, Duration::from_secs(30)) => answer,
        };
        let result = match answer {
            Ok(None) => Ok(()),
            Ok(Some(doc)) => match load_doc(&doc, Path::new("manager feed")) {
                Ok(loaded) => {
                    let started = Instant::now();
                    match backend.apply(&loaded).await {
                        Ok(()) => {
                            stats.applied(loaded.revision, started.elapsed());
                            save_state(&state, &loaded.text)?;
                            let report = deskport_api::v1::AgentReport {
                                revision: Some(loaded.revision),
                                ..Default::default()
                            };
                            if let Err(e) = client.agent_report(&report).await {
                                tracing::debug!(error = %e, "Could not report the revision");
                            }
                            current = Some(loaded);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!("The manager answers again");
                }
                backoff = Duration::from_millis(250);
            }
            Err(message) => {
                if last_error.as_deref() != Some(&message) {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        error = %message,
                        revision = current.as_ref().map(|c| c.revision),
                        "No new policy; the last known one stays in force"
                    );
                }
                last_error = Some(message);
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes the document atomically (temporary file, then rename).
fn save_state(path: &Path, text: &str) -> Result<(), AgentError> {
    let error = |source| AgentError::State {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}
