//! The control plane on PostgreSQL (issue 15, SPEC §9), next to SQLite in the same run:
//!
//! 1. API reads: the same GETs, the same 32 keep-alive connections for 5 s and the same data
//!    set as `benches/api.rs`, on a manager on SQLite and on a replica on PostgreSQL.
//!    Target: >= 5,000 reads/s per replica on PostgreSQL.
//! 2. Fan-out: two replicas on one PostgreSQL database, `CONTROL_BENCH_AGENTS` simulated agents
//!    (default 2,000; half on each replica) long-polling the agent feed with their instance's
//!    agent token through `deskport_api::Feed`, each reporting the revision it got as the
//!    firewall agent does. A rule is added through replica A; the time from that API call to
//!    each agent holding the new revision (p50, p99, all) and the database reads of each
//!    replica for that revision (its `/metrics`: `deskport_manager_db_reads_total`,
//!    `deskport_manager_policy_loads_total`). `CONTROL_BENCH_CHANGES` changes (default 5).
//!    The SQLite baseline: the same agents on one manager on SQLite (it has no replicas).
//!    Targets: p99 <= 2 s to reach every agent, <= 2 reads per replica per revision.
//!
//! Instances are spread over projects of `CONTROL_BENCH_PER_PROJECT` (default 20): an agent's
//! document holds its whole project, so 2,000 instances in one project would make each of the
//! 2,000 documents 2,000 instances long.
//!
//! Everything runs in this process on loopback: each manager (the real axum app over HTTP) on
//! a 2-worker runtime of its own, the agents and the load generator on another; PostgreSQL is
//! a private cluster (`deskport_testsupport::Postgres`: `initdb` in a temporary directory, a
//! free loopback port, stopped at the end). 2,000 agents hold 4,000 sockets in this process:
//! the soft limit of open files is raised to the hard one at start.
//!
//! Run: `cargo bench -p deskport-manager --bench controlplane` (`scripts/bench control-plane`
//! runs only this and updates its section of bench/RESULTS.md). Lines starting with `BENCH|`
//! and `CONTROL|` are read by `scripts/bench-report.py`. Timings on a shared 2-core machine are
//! noisy; nothing here asserts a timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskport_api::v1::{CreateInstance, CreateRule, ProtocolValue, TokenRequest};
use deskport_api::{Client, Feed};
use deskport_manager::ManagerConfig;
use deskport_testsupport::Postgres;
use support::{api_data, load, pct, CONNECTIONS, SECONDS};
use uuid::Uuid;

const PASSWORD: &str = "bench-password";
const READ_PATHS: [&str; 2] = ["/api/v1/security-groups", "/api/v1/instances"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A manager serving HTTP on 127.0.0.1 from its own runtime.
struct Manager {
    base: String,
    _rt: tokio::runtime::Runtime,
}

impl Manager {
    fn start(config: &ManagerConfig) -> Self {
        let rt = runtime();
        let base = rt.block_on(async {
            let store = deskport_manager::open_store(config).await.unwrap();
            deskport_manager::bootstrap(&store, Some(PASSWORD.into()))
                .await
                .unwrap();
            let app =
                deskport_manager::app(deskport_manager::state(store, config), config.body_limit);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // Every simulated agent connects from 127.0.0.1: the cap per source address is
            // lifted to the global one (in production agents come from their own hosts).
            let limits = deskport_manager::HttpLimits {
                per_source: 10_000,
                ..deskport_manager::HttpLimits::default()
            };
            tokio::spawn(deskport_manager::serve::serve_connections(
                listener,
                app,
                None,
                limits,
                Default::default(),
                std::future::pending(),
            ));
            format!("http://{addr}")
        });
        Self { base, _rt: rt }
    }
}

/// Raises the soft limit of open files to the hard one; (before, after, hard).
fn raise_nofile() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    (soft, now)
}

async fn login(base: &str) -> String {
    Client::new(base, None)
        .unwrap()
        .token(&TokenRequest {
            username: "admin".into(),
            password: PASSWORD.into(),
            name: None,
        })
        .await
        .unwrap()
        .token
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `name`'s value in a manager's `/metrics`.
async fn metric(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

async fn revision(base: &str) -> u64 {
    reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["revision"]
        .as_u64()
        .unwrap()
}

/// `n` instances spread over projects of `per_project`, created through `base` (8 at a
/// time); their agent tokens.
async fn instances(base: &str, token: &str, n: usize, per_project: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut projects = Vec::new();
    for p in 0..n.div_ceil(per_project) {
        let created: serde_json::Value = http
            .post(format!("{base}/api/v1/projects"))
            .bearer_auth(token)
            .json(&serde_json::json!({"project": {"name": format!("fleet-{p}")}}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        projects.push(Uuid::parse_str(created["project"]["id"].as_str().unwrap()).unwrap());
    }
    let client = Arc::new(Client::new(base, Some(token.to_owned())).unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, projects) = (client.clone(), next.clone(), projects.clone());
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return tokens;
                    }
                    let created = client
                        .create_instance(CreateInstance {
                            name: format!("agent-{i}"),
                            public_address: format!("198.19.{}.{}", i / 250, i % 250 + 1),
                            internal_address: None,
                            security_groups: vec!["default".into()],
                            project_id: Some(projects[i / per_project]),
                        })
                        .await
                        .unwrap();
                    tokens.push(created.agent_token);
                }
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for w in workers {
        tokens.extend(w.await.unwrap());
    }
    tokens
}

/// One simulated agent: the revision it holds and when each arrived.
#[derive(Default)]
struct AgentSlot {
    revision: AtomicU64,
    arrivals: Mutex<Vec<(u64, Instant)>>,
}

/// What one change cost: the time for it to reach each agent, and per manager the reads and
/// policy loads during it.
struct ChangeResult {
    latencies: Vec<Duration>,
    reached: usize,
    reads: Vec<u64>,
    loads: Vec<u64>,
}

/// `tokens.len()` agents following `managers` (agent i the manager i mod len), `changes`
/// rules added through the first manager.
async fn fan_out(
    managers: &[String],
    user_token: &str,
    tokens: Vec<String>,
    changes: usize,
    timeout: Duration,
) -> Vec<ChangeResult> {
    let slots: Arc<Vec<AgentSlot>> =
        Arc::new((0..tokens.len()).map(|_| AgentSlot::default()).collect());
    let agents: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let url = managers[i % managers.len()].clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                let mut feed = Feed::new(&[url], &token, None).unwrap();
                let mut after = None;
                loop {
                    let doc = feed.next(after).await;
                    let at = Instant::now();
                    let slot = &slots[i];
                    slot.arrivals.lock().unwrap().push((doc.revision, at));
                    slot.revision.store(doc.revision, Ordering::SeqCst);
                    after = Some(doc.revision);
                    // As the firewall agent does once it enforces the document.
                    let _ = feed
                        .report(&deskport_api::v1::AgentReport {
                            revision: after,
                            ..Default::default()
                        })
                        .await;
                }
            })
        })
        .collect();
    let all_at = |revision: u64| {
        slots
            .iter()
            .all(|s| s.revision.load(Ordering::SeqCst) >= revision)
    };
    let first = revision(&managers[0]).await;
    let deadline = Instant::now() + timeout;
    while !all_at(first) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        all_at(first),
        "every agent got its first document in {timeout:?}"
    );
    let c = Client::new(&managers[0], Some(user_token.to_owned())).unwrap();
    let group = c
        .groups()
        .await
        .unwrap()
        .security_groups
        .iter()
        .find(|g| g.name == "default")
        .unwrap()
        .id;
    let mut results = Vec::new();
    for k in 0..changes {
        // The reports of the last revision written, the managers quiet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut reads = Vec::new();
        let mut loads = Vec::new();
        for m in managers {
            reads.push(metric(m, "deskport_manager_db_reads_total").await);
            loads.push(metric(m, "deskport_manager_policy_loads_total").await);
        }
        let t0 = Instant::now();
        c.create_rule(CreateRule {
            security_group_id: group,
            protocol: Some(ProtocolValue::Name("tcp".into())),
            port_range_min: Some(20000 + k as i64),
            remote_ip_prefix: Some("192.0.2.0/24".into()),
            ..CreateRule::default()
        })
        .await
        .unwrap();
        let target = revision(&managers[0]).await;
        let deadline = t0 + timeout;
        while !all_at(target) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut latencies: Vec<Duration> = slots
            .iter()
            .filter_map(|s| {
                let arrivals = s.arrivals.lock().unwrap();
                let (_, at) = arrivals.iter().find(|(r, _)| *r >= target)?;
                Some(at.saturating_duration_since(t0))
            })
            .collect();
        latencies.sort();
        let reached = latencies.len();
        // Let the reports land before counting what the revision cost.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, m) in managers.iter().enumerate() {
            reads[i] = metric(m, "deskport_manager_db_reads_total").await - reads[i];
            loads[i] = metric(m, "deskport_manager_policy_loads_total").await - loads[i];
        }
        results.push(ChangeResult {
            latencies,
            reached,
            reads,
            loads,
        });
    }
    for a in agents {
        a.abort();
    }
    results
}

/// Pooled p50, p99 and the slowest over every change; the most reads and policy loads any
/// manager made for one revision.
struct FanOut {
    p50: Duration,
    p99: Duration,
    all: Duration,
    reads: u64,
    loads: u64,
    missed: usize,
}

fn summarize(label: &str, agents: usize, results: &[ChangeResult]) -> FanOut {
    let mut pooled = Vec::new();
    for (k, r) in results.iter().enumerate() {
        let (p50, p99, all) = if r.latencies.is_empty() {
            (Duration::MAX, Duration::MAX, Duration::MAX)
        } else {
            (
                pct(&r.latencies, 0.5),
                pct(&r.latencies, 0.99),
                *r.latencies.last().unwrap(),
            )
        };
        println!(
            "{label}: change {}: reached {}/{agents} agents, p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms; reads per manager {:?}, policy loads per manager {:?}",
            k + 1,
            r.reached,
            ms(p50),
            ms(p99),
            ms(all),
            r.reads,
            r.loads
        );
        pooled.extend(r.latencies.iter().copied());
    }
    pooled.sort();
    if pooled.is_empty() {
        pooled.push(Duration::MAX);
    }
    let missed = results.iter().map(|r| agents - r.reached).sum();
    FanOut {
        p50: pct(&pooled, 0.5),
        p99: pct(&pooled, 0.99),
        all: *pooled.last().unwrap(),
        reads: results
            .iter()
            .flat_map(|r| &r.reads)
            .copied()
            .max()
            .unwrap(),
        loads: results
            .iter()
            .flat_map(|r| &r.loads)
            .copied()
            .max()
            .unwrap(),
        missed,
    }
}

/// A `CONTROL|figure|value|target|SQLite|met` line for the report's table.
fn control(name: &str, value: &str, target: &str, sqlite: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    };
    println!("CONTROL|{name}|{value}|{target}|{sqlite}|{met}");
}

fn main() {
    // reqwest has no TLS provider of its own here (deskport's client configures it); the
    // plain reqwest clients below need the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"controlplane".contains(&a))
    {
        return;
    }
    let agents = env_usize("CONTROL_BENCH_AGENTS", 2000).max(1);
    let changes = env_usize("CONTROL_BENCH_CHANGES", 5).max(1);
    let per_project = env_usize("CONTROL_BENCH_PER_PROJECT", 20).max(1);
    let timeout = Duration::from_secs(env_usize("CONTROL_BENCH_TIMEOUT_S", 60) as u64);
    let (before, nofile) = raise_nofile();
    println!("open files: soft limit raised from {before} to {nofile} (the hard limit)");
    println!("CONTROLNOTE|nofile|{before}|{nofile}");
    let needed = 2 * agents as u64 + 1000;
    if nofile < needed {
        println!(
            "controlplane: {agents} agents need about {needed} open files, the hard limit is {nofile}: raise it (ulimit -Hn) or set CONTROL_BENCH_AGENTS"
        );
        return;
    }
    let Some(pg) = Postgres::start() else {
        println!("controlplane: skipped, PostgreSQL skipped by the environment");
        return;
    };
    let url = pg.database("bench");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Manager::start(&ManagerConfig {
        data_dir: dir.path().to_owned(),
        ..ManagerConfig::default()
    });
    let pg_config = ManagerConfig {
        data_dir: dir.path().join("unused"),
        db: Some(url),
        ..ManagerConfig::default()
    };
    let a = Manager::start(&pg_config);
    let client_rt = runtime();

    // 1. API reads, the same calls on both stores.
    let (sqlite_token, pg_token) = client_rt.block_on(async {
        let s = login(&sqlite.base).await;
        api_data(&sqlite.base, &s).await;
        let p = login(&a.base).await;
        api_data(&a.base, &p).await;
        (s, p)
    });
    client_rt.block_on(async {
        let _ = load(&sqlite.base, &sqlite_token, "/healthz").await;
        let _ = load(&a.base, &pg_token, "/healthz").await;
    });
    for path in READ_PATHS {
        let (s_rps, s_p50, s_p99) = client_rt.block_on(load(&sqlite.base, &sqlite_token, path));
        let (p_rps, p_p50, p_p99) = client_rt.block_on(load(&a.base, &pg_token, path));
        println!(
            "GET {path} ({CONNECTIONS} connections, {SECONDS} s): PostgreSQL {p_rps:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms; SQLite {s_rps:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms (target on PostgreSQL >= 5000/s per replica)",
            ms(p_p50),
            ms(p_p99),
            ms(s_p50),
            ms(s_p99)
        );
        println!("BENCH|control plane reads/s on PostgreSQL, GET {path}|{p_rps:.0}|req/s|{s_rps:.0}|req/s on SQLite|higher");
        println!(
            "BENCH|control plane p99 latency on PostgreSQL, GET {path}|{:.2}|ms|{:.2}|ms on SQLite|lower",
            ms(p_p99),
            ms(s_p99)
        );
        control(
            &format!("API reads/s per replica, GET {path}"),
            &format!("{p_rps:.0}/s"),
            "≥ 5,000/s",
            &format!("{s_rps:.0}/s"),
            Some(p_rps >= 5000.0),
        );
        control(
            &format!("API p99 latency, GET {path}"),
            &format!("{:.1} ms", ms(p_p99)),
            "≤ 20 ms (SPEC §7, on SQLite)",
            &format!("{:.1} ms", ms(s_p99)),
            Some(ms(p_p99) <= 20.0),
        );
    }

    // 2. Fan-out: two replicas on PostgreSQL, then the same agents on the SQLite manager.
    let b = Manager::start(&pg_config);
    let replicas = [a.base.clone(), b.base.clone()];
    println!(
        "fan-out: {agents} agents in projects of {per_project}, {changes} changes, each agent its own connection"
    );
    let started = Instant::now();
    let pg_results = client_rt.block_on(async {
        let tokens = instances(&a.base, &pg_token, agents, per_project).await;
        println!(
            "fan-out: {agents} instances made on PostgreSQL in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        fan_out(&replicas, &pg_token, tokens, changes, timeout).await
    });
    let pg_fan = summarize("PostgreSQL, 2 replicas", agents, &pg_results);
    let started = Instant::now();
    let sqlite_results = client_rt.block_on(async {
        let tokens = instances(&sqlite.base, &sqlite_token, agents, per_project).await;
        println!(
            "fan-out: {agents} instances made on SQLite in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        fan_out(
            std::slice::from_ref(&sqlite.base),
            &sqlite_token,
            tokens,
            changes,
            timeout,
        )
        .await
    });
    let sqlite_fan = summarize("SQLite, 1 manager", agents, &sqlite_results);

    println!(
        "one change to {agents} agents ({changes} changes): PostgreSQL, 2 replicas: p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms, at most {} reads and {} policy loads per replica per revision; SQLite, 1 manager: p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms, {} reads per revision (targets: p99 <= 2000 ms, <= 2 reads per replica per revision)",
        ms(pg_fan.p50),
        ms(pg_fan.p99),
        ms(pg_fan.all),
        pg_fan.reads,
        pg_fan.loads,
        ms(sqlite_fan.p50),
        ms(sqlite_fan.p99),
        ms(sqlite_fan.all),
        sqlite_fan.reads,
    );
    if pg_fan.missed + sqlite_fan.missed > 0 {
        println!(
            "fan-out: agents not reached within {timeout:?}: {} on PostgreSQL, {} on SQLite (counted out of the percentiles)",
            pg_fan.missed, sqlite_fan.missed
        );
    }
    let n = agents;
    println!(
        "BENCH|control plane change to {n} agents p99, 2 PostgreSQL replicas|{:.1}|ms|{:.1}|ms 1 manager on SQLite|lower",
        ms(pg_fan.p99),
        ms(sqlite_fan.p99)
    );
    println!(
        "BENCH|control plane change to {n} agents p50, 2 PostgreSQL replicas|{:.1}|ms|{:.1}|ms 1 manager on SQLite|lower",
        ms(pg_fan.p50),
        ms(sqlite_fan.p50)
    );
    println!(
        "BENCH|control plane database reads per replica per revision|{}|reads|2|reads target|lower",
        pg_fan.reads
    );
    control(
        &format!("one change reaches {n} agents, p50 (2 replicas)"),
        &format!("{:.0} ms", ms(pg_fan.p50)),
        "—",
        &format!("{:.0} ms", ms(sqlite_fan.p50)),
        None,
    );
    control(
        &format!("one change reaches {n} agents, p99 (2 replicas)"),
        &format!("{:.0} ms", ms(pg_fan.p99)),
        "≤ 2,000 ms",
        &format!("{:.0} ms", ms(sqlite_fan.p99)),
        Some(pg_fan.missed == 0 && pg_fan.p99 <= Duration::from_secs(2)),
    );
    control(
        &format!("one change reaches all {n} agents (slowest of {changes})"),
        &format!("{:.0} ms", ms(pg_fan.all)),
        "—",
        &format!("{:.0} ms", ms(sqlite_fan.all)),
        None,
    );
    control(
        "database reads per replica per revision (most of any)",
        &pg_fan.reads.to_string(),
        "≤ 2",
        &sqlite_fan.reads.to_string(),
        Some(pg_fan.reads <= 2),
    );
    control(
        "policy loads per replica per revision (most of any)",
        &pg_fan.loads.to_string(),
        "—",
        &sqlite_fan.loads.to_string(),
        None,
    );
    println!("CONTROLNOTE|setup|{n}|{changes}|{per_project}");
    drop(client_rt);
    drop((a, b, sqlite));
    drop(pg);
}
