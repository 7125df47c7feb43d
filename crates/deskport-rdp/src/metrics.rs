//! The RDP server's counters, as Prometheus text for `/metrics` (`deskport rdp-server
//! --metrics-listen`): connections accepted and refused (by why: the source address's share
//! of the connection sequence, its rate of new connections, the global limit), open, ended
//! with an error, closed for not logging on in time, and sessions started. A scanner or brute-forcer shows up here before anyone
//! reads the log (which rate-limits its refusal lines).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already has its share of connections in the connection sequence.
    SourceHandshakes,
    /// Its address opened too many new connections in the last second.
    SourceRate,
    /// The server has `max_connections`.
    Limit,
}

impl Refusal {
    const ALL: [Refusal; 3] = [
        Refusal::SourceHandshakes,
        Refusal::SourceRate,
        Refusal::Limit,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SourceHandshakes => "source_handshakes",
            Refusal::SourceRate => "source_rate",
            Refusal::Limit => "limit",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::SourceHandshakes => {
                "too many connections of this address in the connection sequence"
            }
            Refusal::SourceRate => "too many new connections from this address",
            Refusal::Limit => "the connection limit is reached",
        })
    }
}

/// The counters (shared by the listener and every connection).
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    refused: [AtomicU64; 3],
    open: AtomicU64,
    errors: AtomicU64,
    logon_timeouts: AtomicU64,
    sessions: AtomicU64,
}

impl Metrics {
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused for `why` so far.
    pub fn refused_total(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended (`failed`: with an error).
    pub(crate) fn closed(&self, failed: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client did not log on within the logon timeout (also counted as an error).
    pub(crate) fn logon_timed_out(&self) {
        self.logon_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "deskport_rdp_connections_accepted_total",
            "counter",
            "TCP connections admitted to the connection sequence.",
            &[(String::new(), get(&self.accepted))],
        );
        let refused: Vec<(String, u64)> = Refusal::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.label()),
                    self.refused_total(*r),
                )
            })
            .collect();
        metric(
            "deskport_rdp_connections_refused_total",
            "counter",
            "TCP connections closed at once, by reason.",
            &refused,
        );
        metric(
            "deskport_rdp_connections_open",
            "gauge",
            "Connections open (in the connection sequence or in a session).",
            &[(String::new(), get(&self.open))],
        );
        metric(
            "deskport_rdp_connections_failed_total",
            "counter",
            "Connections that ended with an error (refused logons, timeouts, protocol errors).",
            &[(String::new(), get(&self.errors))],
        );
        metric(
            "deskport_rdp_logon_timeouts_total",
            "counter",
            "Connections closed because the client had not logged on within logon_timeout_secs.",
            &[(String::new(), get(&self.logon_timeouts))],
        );
        metric(
            "deskport_rdp_sessions_started_total",
            "counter",
            "Logons that reached a session.",
            &[(String::new(), get(&self.sessions))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        m.accepted();
        m.opened();
        m.refused(Refusal::SourceRate);
        m.refused(Refusal::SourceRate);
        m.refused(Refusal::Limit);
        m.session_started();
        m.opened();
        m.closed(true);
        let text = m.render();
        for line in [
            "deskport_rdp_connections_accepted_total 1",
            "deskport_rdp_connections_refused_total{reason=\"source_handshakes\"} 0",
            "deskport_rdp_connections_refused_total{reason=\"source_rate\"} 2",
            "deskport_rdp_connections_refused_total{reason=\"limit\"} 1",
            "deskport_rdp_connections_open 1",
            "deskport_rdp_connections_failed_total 1",
            "deskport_rdp_sessions_started_total 1",
            "# TYPE deskport_rdp_connections_open gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
