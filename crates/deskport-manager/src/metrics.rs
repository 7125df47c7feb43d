//! Request counters and latency histograms in the Prometheus text format (`/metrics`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (method, route, status) → count
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → (bucket counts, sum of seconds, count)
    latency: BTreeMap<(String, String), ([u64; BUCKETS.len()], f64, u64)>,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner
            .requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
        let entry = inner
            .latency
            .entry((method.to_owned(), route.to_owned()))
            .or_insert(([0; BUCKETS.len()], 0.0, 0));
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                entry.0[i] += 1;
            }
        }
        entry.1 += seconds;
        entry.2 += 1;
    }

    pub fn render(&self, revision: u64) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out += "# HELP deskport_manager_requests_total HTTP requests by route and status.\n";
        out += "# TYPE deskport_manager_requests_total counter\n";
        for ((method, route, status), n) in &inner.requests {
            out += &format!(
                "deskport_manager_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}\n"
            );
        }
        out += "# HELP deskport_manager_request_seconds HTTP request latency.\n";
        out += "# TYPE deskport_manager_request_seconds histogram\n";
        for ((method, route), (buckets, sum, count)) in &inner.latency {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            for (bound, n) in BUCKETS.iter().zip(buckets) {
                out += &format!(
                    "deskport_manager_request_seconds_bucket{{{labels},le=\"{bound}\"}} {n}\n"
                );
            }
            out += &format!(
                "deskport_manager_request_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n"
            );
            out += &format!("deskport_manager_request_seconds_sum{{{labels}}} {sum:.6}\n");
            out += &format!("deskport_manager_request_seconds_count{{{labels}}} {count}\n");
        }
        out += "# HELP deskport_policy_revision The policy revision agents follow.\n";
        out += "# TYPE deskport_policy_revision gauge\n";
        out += &format!("deskport_policy_revision {revision}\n");
        out
    }
}

/// The store's counters: reads of the database, loads of the policy view (one per revision
/// however many agents wait), and whether other replicas' commits are heard.
pub fn render_store(stats: &deskport_store::StoreStats) -> String {
    let mut out = String::new();
    out += "# HELP deskport_manager_db_reads_total Read transactions on the database.\n";
    out += "# TYPE deskport_manager_db_reads_total counter\n";
    out += &format!("deskport_manager_db_reads_total {}\n", stats.reads);
    out += "# HELP deskport_manager_policy_loads_total Loads of every group and instance (once per revision when copies are in use).\n";
    out += "# TYPE deskport_manager_policy_loads_total counter\n";
    out += &format!(
        "deskport_manager_policy_loads_total {}\n",
        stats.policy_loads
    );
    if let Some(listening) = stats.listening {
        out += "# HELP deskport_manager_db_listening Whether other replicas' commits are heard now (PostgreSQL).\n";
        out += "# TYPE deskport_manager_db_listening gauge\n";
        out += &format!("deskport_manager_db_listening {}\n", u8::from(listening));
        out += "# HELP deskport_manager_db_listener_losses_total Times the connection that hears other replicas' commits was lost.\n";
        out += "# TYPE deskport_manager_db_listener_losses_total counter\n";
        out += &format!(
            "deskport_manager_db_listener_losses_total {}\n",
            stats.listener_losses
        );
    }
    out
}

/// Middleware: times every request and counts it under its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics.record(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The RD Gateway's counters.
pub fn render_gateway(stats: &deskport_gateway::Stats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out += &format!(
            "# HELP deskport_gateway_{name} {help}\n# TYPE deskport_gateway_{name} {kind}\n"
        );
        out += &format!("deskport_gateway_{name} {value}\n");
    };
    metric(
        "tunnels",
        "gauge",
        "RD Gateway tunnels open or being set up.",
        stats.active,
    );
    metric(
        "tunnels_opened_total",
        "counter",
        "RD Gateway tunnels whose channel opened.",
        stats.opened,
    );
    metric(
        "tunnels_refused_total",
        "counter",
        "RD Gateway tunnels refused (token, channel, setup).",
        stats.refused,
    );
    metric(
        "tunnels_cut_total",
        "counter",
        "RD Gateway tunnels cut because their grant was withdrawn.",
        stats.cut,
    );
    metric(
        "busy_total",
        "counter",
        "RD Gateway requests turned away at the tunnel limit.",
        stats.busy,
    );
    metric(
        "bytes_to_instances_total",
        "counter",
        "RDP bytes carried from clients to instances.",
        stats.bytes_to_instances,
    );
    metric(
        "bytes_to_clients_total",
        "counter",
        "RDP bytes carried from instances to clients.",
        stats.bytes_to_clients,
    );
    out
}

/// Connections the listener's caps turned away.
/// The browser console's relay: sessions open now, of how many at most.
pub fn render_console(open: usize) -> String {
    let mut out = String::new();
    out += "# HELP deskport_manager_console_sessions Browser console sessions this manager relays now.\n";
    out += "# TYPE deskport_manager_console_sessions gauge\n";
    out += &format!("deskport_manager_console_sessions {open}\n");
    out += "# HELP deskport_manager_console_sessions_max Browser console sessions this manager relays at most.\n";
    out += "# TYPE deskport_manager_console_sessions_max gauge\n";
    out += &format!(
        "deskport_manager_console_sessions_max {}\n",
        crate::desktop::MAX_SESSIONS
    );
    out
}

pub fn render_http(refusals: &crate::serve::Refusals) -> String {
    use std::sync::atomic::Ordering;
    let mut out = String::new();
    out += "# HELP deskport_manager_connections_refused_total Connections closed at once by a cap (per source address, or in all).\n";
    out += "# TYPE deskport_manager_connections_refused_total counter\n";
    out += &format!(
        "deskport_manager_connections_refused_total{{cap=\"per_source\"}} {}\n",
        refusals.per_source.load(Ordering::Relaxed)
    );
    out += &format!(
        "deskport_manager_connections_refused_total{{cap=\"total\"}} {}\n",
        refusals.total.load(Ordering::Relaxed)
    );
    out
}
