//! Admission per source address: how many connections one address may have in the connection
//! sequence at once, and how many new ones a second. A scanner or a slowloris client holding
//! unauthenticated connections then uses its own share, not the global connection limit every
//! other address needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Refusal;

/// The per-address limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Connections of one address in the connection sequence (before logon completes).
    pub handshakes: usize,
    /// New connections of one address per second (bursts of twice as many).
    pub per_second: u32,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            handshakes: 8,
            per_second: 10,
        }
    }
}

/// Entries kept at most before idle ones are forgotten.
const TABLE: usize = 4096;

#[derive(Debug)]
struct Source {
    handshakes: usize,
    tokens: f64,
    refilled: Instant,
}

/// Every address's share, and what was refused.
#[derive(Debug)]
pub struct Sources {
    limits: SourceLimits,
    table: Mutex<HashMap<IpAddr, Source>>,
    refused: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

/// A connection's place among its address's handshakes; given back when the connection
/// sequence ends (logged on, or gone).
#[derive(Debug)]
pub struct HandshakeSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    pub fn new(limits: SourceLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            logged: Mutex::new(None),
        })
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A handshake slot for a new connection from `source`, or why not.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= TABLE {
            table.retain(|_, s| {
                s.handshakes > 0 || now.duration_since(s.refilled) < Duration::from_secs(10)
            });
        }
        let burst = f64::from(self.limits.per_second.max(1)) * 2.0;
        let entry = table.entry(source).or_insert(Source {
            handshakes: 0,
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * f64::from(self.limits.per_second)).min(burst);
        entry.refilled = now;
        let refusal = if entry.handshakes >= self.limits.handshakes {
            Some(Refusal::SourceHandshakes)
        } else if entry.tokens < 1.0 {
            Some(Refusal::SourceRate)
        } else {
            None
        };
        if let Some(why) = refusal {
            drop(table);
            self.refused.fetch_add(1, Ordering::Relaxed);
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                *logged = Some(Instant::now());
                tracing::warn!(%source, refused = self.refused(), "Refused a connection: {why}");
            }
            return Err(why);
        }
        entry.tokens -= 1.0;
        entry.handshakes += 1;
        Ok(HandshakeSlot {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut table = self.sources.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = table.get_mut(&self.source) {
            s.handshakes = s.handshakes.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_has_its_share_and_others_theirs() {
        let sources = Sources::new(SourceLimits {
            handshakes: 3,
            per_second: 100,
        });
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let held: Vec<_> = (0..3).map(|_| sources.admit(a).unwrap()).collect();
        assert!(sources.admit(a).is_err(), "a's fourth handshake");
        assert!(sources.admit(b).is_ok(), "b is not held up by a");
        drop(held);
        assert!(sources.admit(a).is_ok(), "a's slots come back");
        assert_eq!(sources.refused(), 1);
    }

    #[test]
    fn new_connections_are_rate_limited_per_address() {
        let sources = Sources::new(SourceLimits {
            handshakes: 1000,
            per_second: 5,
        });
        let a: IpAddr = [127, 0, 0, 1].into();
        // A burst of twice the rate, then refusals.
        let admitted = (0..30).filter(|_| sources.admit(a).is_ok()).count();
        assert!((10..=11).contains(&admitted), "{admitted}");
        assert!(sources.admit([127, 0, 0, 2].into()).is_ok());
    }
}
