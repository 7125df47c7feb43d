//! The firewall agent: watches a policy source and keeps a backend enforcing it.
//!
//! - A source that cannot be read or parsed changes nothing: the last good policy stays in
//!   force and the error is logged (once per distinct error).
//! - At start, a source that gives no valid policy is an error: there is nothing to enforce.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use deskport_api::{Feed, PolicyDocument};
use deskport_policy::Policy;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::nft::{NftBackend, NftError};

/// Where the desired state comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A policy document on disk (`.json`, or TOML otherwise), re-read when it changes.
    File(PathBuf),
    /// The agent feed of the managers at `urls` (replicas of one control plane; the first one
    /// first, the next when it stops answering), with the instance's agent `token`. The last
    /// document received is kept in `state` and enforced at start and whenever no manager can
    /// be reached. `https://` managers are checked as `trust` says.
    Manager {
        urls: Vec<String>,
        token: String,
        state: PathBuf,
        trust: Option<deskport_api::ServerTrust>,
    },
}

/// The enforcement backend.
#[derive(Debug, Clone)]
pub enum Backend {
    Nft(NftBackend),
    Gateway(Gateway),
}

/// What an agent enforces, how, and what it serves.
#[derive(Debug)]
pub struct AgentConfig {
    pub source: Source,
    pub backend: Backend,
    /// How often a policy file is checked for changes.
    pub poll_interval: Duration,
    /// Serve `/metrics` and `/healthz` here.
    pub metrics_listen: Option<SocketAddr>,
    /// Remove the nftables table when the agent stops. By default it stays (fail closed: a
    /// stopped agent still enforces); `deskport up` removes it because its instance stops too.
    pub remove_on_stop: bool,
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
    #[error("cannot follow the manager")]
    Feed(#[from] deskport_api::ClientError),
    #[error("cannot listen for metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
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
    fn name(&self) -> &'static str {
        match self {
            Backend::Nft(_) => "nft",
            Backend::Gateway(_) => "gateway",
        }
    }

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
#[derive(Debug)]
pub struct AgentStats {
    /// The revision in force (`None` before the first apply).
    revision: watch::Sender<Option<u64>>,
    pub applies: AtomicU64,
    pub failures: AtomicU64,
    /// Duration of the last successful apply, in microseconds.
    pub last_apply_us: AtomicU64,
    /// The source followed now (a file, or one manager's URL).
    following: Mutex<String>,
}

impl Default for AgentStats {
    fn default() -> Self {
        Self {
            revision: watch::channel(None).0,
            applies: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_apply_us: AtomicU64::new(0),
            following: Mutex::new(String::new()),
        }
    }
}

impl AgentStats {
    /// The counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let following = self
            .following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(['\\', '"'], "_");
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
             deskport_agent_last_apply_seconds {:.6}\n\
             # HELP deskport_agent_source_info The policy source followed now (a file or a manager).\n\
             # TYPE deskport_agent_source_info gauge\n\
             deskport_agent_source_info{{source=\"{following}\"}} 1\n",
            self.revision.borrow().unwrap_or(0),
            get(&self.applies),
            get(&self.failures),
            get(&self.last_apply_us) as f64 / 1e6
        )
    }

    /// The revision in force, as it changes (`None` until the first policy is applied).
    pub fn revision(&self) -> watch::Receiver<Option<u64>> {
        self.revision.subscribe()
    }

    fn applied(&self, revision: u64, took: Duration) {
        self.revision.send_replace(Some(revision));
        self.applies.fetch_add(1, Ordering::Relaxed);
        self.last_apply_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn follow(&self, source: &str) {
        let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
        if *following != source {
            *following = source.to_owned();
        }
    }
}

/// A firewall agent: [`Agent::run`] enforces its source's policy with its backend until the
/// shutdown future resolves.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    stats: Arc<AgentStats>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            stats: Arc::new(AgentStats::default()),
        }
    }

    /// The agent's counters (and the revision in force, for callers that wait for it).
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Serves metrics (if configured), applies the source's policy and follows its changes
    /// until `shutdown` resolves; then stops the gateway (and removes the nftables table if
    /// configured).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let Agent { config, stats } = self;
        let mut metrics_task = None;
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics { addr, source })?;
            let (stats, gateway) = (stats.clone(), config.backend.gateway());
            let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                let mut text = stats.metrics();
                if let Some(g) = &gateway {
                    text += &g.metrics();
                }
                text
            });
            tracing::info!(%addr, "Serving /metrics and /healthz");
            metrics_task = Some(tokio::spawn(crate::http::serve_metrics(listener, metrics)));
        }
        let backend = config.backend.clone();
        let result = follow(
            config.source,
            &backend,
            config.poll_interval,
            &stats,
            shutdown,
        )
        .await;
        if let Some(task) = metrics_task {
            task.abort();
        }
        match &backend {
            Backend::Gateway(g) => g.shutdown().await,
            Backend::Nft(nft) if config.remove_on_stop => {
                if let Err(e) = nft.remove().await {
                    tracing::warn!(error = %e, "Could not remove the nftables table");
                }
            }
            Backend::Nft(_) => {}
        }
        tracing::info!("Firewall agent stopped");
        result
    }
}

impl Backend {
    fn gateway(&self) -> Option<Gateway> {
        match self {
            Backend::Gateway(g) => Some(g.clone()),
            Backend::Nft(_) => None,
        }
    }
}

/// Runs an agent with `config` until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    Agent::new(config).run(shutdown).await
}

/// Watches `source` and applies each new valid version with `backend`, until `shutdown`
/// resolves.
async fn follow(
    source: Source,
    backend: &Backend,
    poll: Duration,
    stats: &AgentStats,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let path = match source {
        Source::File(path) => path,
        Source::Manager {
            urls,
            token,
            state,
            trust,
        } => {
            let feed = Feed::new(&urls, &token, trust.as_ref())?;
            tracing::info!(
                backend = backend.name(),
                manager = feed.following(),
                "Firewall agent started"
            );
            return follow_manager(feed, state, backend, stats, shutdown).await;
        }
    };
    tracing::info!(backend = backend.name(), policy = %path.display(), "Firewall agent started");
    stats.follow(&path.display().to_string());
    // The stamp first, the contents second: a change made while the first policy is read and
    // applied changes the stamp, and is applied on the next poll.
    let mut stamp = file_stamp(&path);
    let mut current = load_file(&path)?;
    enforce(backend, &current, stats).await?;
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
            Ok(loaded) => enforce(backend, &loaded, stats).await.map(|()| {
                current = loaded;
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => not_applied(&e, &mut last_error, Some(current.revision), stats),
        }
    }
}

/// Applies `loaded` and counts it.
async fn enforce(backend: &Backend, loaded: &Loaded, stats: &AgentStats) -> Result<(), AgentError> {
    let started = Instant::now();
    backend.apply(loaded).await?;
    stats.applied(loaded.revision, started.elapsed());
    Ok(())
}

/// Logs (once per distinct error) and counts a policy that could not be applied.
fn not_applied(
    error: &dyn std::fmt::Display,
    last_error: &mut Option<String>,
    revision: Option<u64>,
    stats: &AgentStats,
) {
    let message = error.to_string();
    if last_error.as_deref() != Some(&message) {
        stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            error = %message,
            revision,
            "New policy not applied; the previous one stays in force"
        );
    }
    *last_error = Some(message);
}

/// Modification time, size and inode: a cheap change detector. The inode catches a file
/// replaced by rename within the file system's timestamp granularity.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The manager source: follow the feed, apply each new document, keep it on disk, report the
/// revision; enforce the kept document while no manager can be reached.
async fn follow_manager(
    mut feed: Feed,
    state: PathBuf,
    backend: &Backend,
    stats: &AgentStats,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let mut current: Option<Loaded> = None;
    if state.exists() {
        match load_file(&state) {
            Ok(kept) => {
                enforce(backend, &kept, stats).await?;
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
    loop {
        stats.follow(feed.following());
        let after = current.as_ref().map(|c| c.revision);
        // The metrics name the manager followed as soon as the feed fails over, not only
        // when a document arrives.
        let mut followed = feed.watch_following();
        let doc = {
            let next = feed.next(after);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    doc = &mut next => break doc,
                    Ok(()) = followed.changed() => stats.follow(&followed.borrow_and_update()),
                }
            }
        };
        stats.follow(feed.following());
        let loaded = match load_doc(&doc, Path::new("manager feed")) {
            Ok(loaded) => enforce(backend, &loaded, stats).await.map(|()| loaded),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(loaded) => {
                last_error = None;
                save_state(&state, &loaded.text)?;
                let report = deskport_api::v1::AgentReport {
                    revision: Some(loaded.revision),
                    ..Default::default()
                };
                if let Err(e) = feed.report(&report).await {
                    tracing::debug!(error = %e, "Could not report the revision");
                }
                current = Some(loaded);
            }
            Err(e) => {
                not_applied(
                    &e,
                    &mut last_error,
                    current.as_ref().map(|c| c.revision),
                    stats,
                );
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = feed.back_off() => {}
                }
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
