//! Rate-limited decision logging (SPEC §2: "each decision can be logged … with rate limiting").
//! Up to `per_second` decisions are logged each second; the rest are counted and reported in
//! one line when the next second starts.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use deskport_policy::Decision;

#[derive(Debug)]
pub struct DecisionLog {
    per_second: u32,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl DecisionLog {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Logs one decision if the budget of this second allows; returns whether it did.
    pub fn decision(
        &self,
        instance: &str,
        peer: SocketAddr,
        protocol: u8,
        port: u16,
        decision: Decision,
    ) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.elapsed().as_secs() >= 1 {
            if w.suppressed > 0 {
                tracing::info!(
                    suppressed = w.suppressed,
                    "Decisions not logged (rate limit)"
                );
            }
            *w = Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= self.per_second {
            w.suppressed += 1;
            return false;
        }
        w.logged += 1;
        drop(w);
        match decision {
            Decision::Allow(rule) => {
                tracing::info!(instance, %peer, protocol, port, %rule, "Allow");
            }
            Decision::Deny => {
                tracing::info!(instance, %peer, protocol, port, "Deny");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_at_most_the_budget_per_second() {
        let log = DecisionLog::new(3);
        let peer: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let logged = (0..10)
            .filter(|_| log.decision("i", peer, 6, 3389, Decision::Deny))
            .count();
        assert_eq!(logged, 3);
        assert_eq!(log.window.lock().unwrap().suppressed, 7);
    }
}
