//! Logon throttling, shared by the manager's login and the RDP server's logons (SPEC §3, §4):
//! failures are counted per key (a user name, a source address); after `max_failures` within
//! `window` the key is locked out for `lockout`, doubling with each further lockout up to
//! `max_lockout`. A success clears the key's count.
//!
//! Time is a parameter (`now`), as everywhere in this crate: the caller reads the clock, so the
//! policy is tested on a simulated one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most before expired ones are forgotten (bounded memory under a spray of
/// user names).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct Throttle {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub max_lockout: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first: Instant,
    locked_until: Option<Instant>,
    lockouts: u32,
}

impl Default for Throttle {
    /// 5 failures in 15 minutes lock out for 1 minute, then 2, 4, … up to 15 minutes.
    fn default() -> Self {
        Self::new(
            5,
            Duration::from_secs(900),
            Duration::from_secs(60),
            Duration::from_secs(900),
        )
    }
}

impl Throttle {
    pub fn new(
        max_failures: u32,
        window: Duration,
        lockout: Duration,
        max_lockout: Duration,
    ) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            lockout,
            max_lockout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while any of `keys` is locked out at `now`.
    pub fn check(&self, keys: &[String], now: Instant) -> Result<(), u64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = keys
            .iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs() + 1)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Records a failure at `now` for every key; returns the lockout that started, if one did.
    pub fn failure(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > MAX_KEYS {
            entries.retain(|_, e| {
                now.duration_since(e.first) < self.window || e.locked_until.is_some_and(|u| u > now)
            });
        }
        let mut started = None;
        for key in keys {
            let e = entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                first: now,
                locked_until: None,
                lockouts: 0,
            });
            if now.duration_since(e.first) > self.window {
                e.failures = 0;
                e.first = now;
            }
            e.failures += 1;
            if e.failures >= self.max_failures {
                let factor = 1u32 << e.lockouts.min(16);
                let lock = (self.lockout * factor).min(self.max_lockout);
                e.locked_until = Some(now + lock);
                e.lockouts += 1;
                e.failures = 0;
                e.first = now;
                started = Some(started.map_or(lock, |s: Duration| s.max(lock)));
            }
        }
        started
    }

    /// A success: the key's failures and lockout history are forgotten.
    pub fn success(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_failures_doubles_and_expires() {
        let t = Throttle::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(25),
        );
        let keys = vec!["user:a".to_owned()];
        let t0 = Instant::now();
        assert_eq!(t.failure(&keys, t0), None);
        assert_eq!(t.failure(&keys, t0), None);
        assert!(t.check(&keys, t0).is_ok());
        assert_eq!(t.failure(&keys, t0), Some(Duration::from_secs(10)));
        assert_eq!(t.check(&keys, t0), Err(11));
        assert!(
            t.check(&["user:b".to_owned()], t0).is_ok(),
            "other keys are free"
        );
        let t1 = t0 + Duration::from_secs(11);
        assert!(t.check(&keys, t1).is_ok(), "the first lockout expired");
        for _ in 0..3 {
            t.failure(&keys, t1);
        }
        assert!(
            t.check(&keys, t1 + Duration::from_secs(15)).is_err(),
            "the second is 20 s"
        );
        for _ in 0..3 {
            t.failure(&keys, t1 + Duration::from_secs(30));
        }
        assert_eq!(
            t.check(&keys, t1 + Duration::from_secs(30)),
            Err(26),
            "capped at 25 s"
        );
        t.success("user:a");
        assert!(t.check(&keys, t1 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = Throttle::new(
            2,
            Duration::from_secs(5),
            Duration::from_secs(10),
            Duration::from_secs(10),
        );
        let keys = vec!["ip:198.18.0.2".to_owned()];
        let t0 = Instant::now();
        t.failure(&keys, t0);
        assert_eq!(t.failure(&keys, t0 + Duration::from_secs(6)), None);
        assert!(t.check(&keys, t0 + Duration::from_secs(6)).is_ok());
    }
}
