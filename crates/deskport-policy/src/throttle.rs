//! Logon throttling, shared by the manager's login and the RDP server's logons (SPEC §3, §4):
//! failures are counted per key (a user name, a source address); after `max_failures` within
//! `window` the key is locked out for `lockout`, doubling with each further lockout up to
//! `max_lockout`. A success clears the key's count.
//!
//! Time is a parameter (`now`), as everywhere in this crate: the caller reads the clock, so the
//! policy is tested on a simulated one.
//!
//! Two forms of the same rules: [`Throttle`] keeps its counts in this process (the RDP server's
//! logons); [`Limits`] is the rules as pure functions over one key's [`Attempts`], for counts
//! kept elsewhere — the manager's are in its database, so that replicas share them. `Limits`
//! also counts an attempt while it is being checked (as a failure, refunded on success), so
//! that attempts made at the same time, on any replica, cannot together get past the limit.

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
                let lock = self.limits().lockout_after(e.lockouts);
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

    fn limits(&self) -> Limits {
        Limits {
            max_failures: self.max_failures,
            window: self.window,
            lockout: self.lockout,
            max_lockout: self.max_lockout,
        }
    }
}

/// The throttling rules over one key's [`Attempts`], with times in Unix milliseconds: for
/// counts kept outside this process. An attempt is counted when it starts ([`Limits::begin`]),
/// locks the key out when it fails and the count has reached `max_failures`
/// ([`Limits::failed`]), and is taken back when it succeeds ([`Limits::succeeded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub max_lockout: Duration,
}

impl Default for Limits {
    /// 5 failures in 15 minutes lock out for 1 minute, then 2, 4, … up to 15 minutes.
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(60),
            max_lockout: Duration::from_secs(900),
        }
    }
}

/// One key's attempts, as [`Limits`] keep them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Failures, and attempts still being checked, since `first_at`.
    pub failures: u32,
    /// When the count started (Unix ms).
    pub first_at: i64,
    /// Refused until then (Unix ms).
    pub locked_until: Option<i64>,
    /// Lockouts so far (each one doubles the next).
    pub lockouts: u32,
    /// The last attempt (Unix ms).
    pub last_at: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Limits {
    /// The lockout that follows `lockouts` earlier ones: doubling, at most `max_lockout`.
    pub fn lockout_after(&self, lockouts: u32) -> Duration {
        (self.lockout * (1u32 << lockouts.min(16))).min(self.max_lockout)
    }

    /// The failures that count at `now` (none once the window has passed).
    fn counted(&self, a: &Attempts, now: i64) -> u32 {
        if now.saturating_sub(a.first_at) > ms(self.window) {
            0
        } else {
            a.failures
        }
    }

    /// `Err(seconds to wait)` while the key is locked out, or while failures and attempts
    /// being checked already reach `max_failures`.
    pub fn check(&self, a: &Attempts, now: i64) -> Result<(), u64> {
        if let Some(until) = a.locked_until.filter(|u| *u > now) {
            return Err((until - now) as u64 / 1000 + 1);
        }
        if self.counted(a, now) >= self.max_failures.max(1) {
            return Err(1);
        }
        Ok(())
    }

    /// An attempt starts at `now`: it counts as a failure until it succeeds.
    pub fn begin(&self, a: Option<Attempts>, now: i64) -> Attempts {
        let mut a = a.unwrap_or(Attempts {
            first_at: now,
            ..Attempts::default()
        });
        if self.counted(&a, now) == 0 {
            a.failures = 0;
            a.first_at = now;
        }
        a.failures += 1;
        a.last_at = now;
        a
    }

    /// The attempt failed at `now`: once the count reaches `max_failures`, the key is locked
    /// out (the returned duration) and counting starts again.
    pub fn failed(&self, mut a: Attempts, now: i64) -> (Attempts, Option<Duration>) {
        a.last_at = now;
        if self.counted(&a, now) < self.max_failures.max(1) {
            return (a, None);
        }
        let lock = self.lockout_after(a.lockouts);
        a.locked_until = Some(now.saturating_add(ms(lock)));
        a.lockouts += 1;
        a.failures = 0;
        a.first_at = now;
        (a, Some(lock))
    }

    /// The attempt succeeded: it no longer counts.
    pub fn succeeded(&self, mut a: Attempts) -> Attempts {
        a.failures = a.failures.saturating_sub(1);
        a
    }

    /// How long a key without attempts is remembered: its window and its longest lockout
    /// (after that it would start afresh anyway, lockout doubling included).
    pub fn memory(&self) -> Duration {
        self.window + self.max_lockout
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

    fn limits(max_failures: u32) -> Limits {
        Limits {
            max_failures,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(10),
            max_lockout: Duration::from_secs(25),
        }
    }

    /// One attempt after another: like [`Throttle`], `max_failures` failures lock the key out,
    /// for longer each time, and a success takes its own attempt back.
    #[test]
    fn limits_lock_out_after_failures_in_turn() {
        let l = limits(3);
        let t0 = 1_000_000;
        let mut a = None;
        for n in 1..=3 {
            let current = a.unwrap_or_default();
            assert_eq!(l.check(&current, t0), Ok(()), "attempt {n} may go on");
            let (after, lock) = l.failed(l.begin(a, t0), t0);
            assert_eq!(lock, (n == 3).then_some(Duration::from_secs(10)));
            a = Some(after);
        }
        let locked = a.unwrap();
        assert_eq!(l.check(&locked, t0), Err(11));
        assert_eq!(l.check(&locked, t0 + 10_000), Ok(()), "the lockout ends");
        let mut a = locked;
        for _ in 0..3 {
            a = l.failed(l.begin(Some(a), t0 + 10_000), t0 + 10_000).0;
        }
        assert_eq!(
            l.check(&a, t0 + 10_000),
            Err(21),
            "the second lockout is 20 s"
        );
        let ok = l.succeeded(l.begin(Some(l.begin(None, t0)), t0));
        assert_eq!(ok.failures, 1, "a success takes back its own attempt only");
        assert!(
            l.memory() >= Duration::from_secs(60 + 25),
            "a key is kept as long as its window and its longest lockout"
        );
    }

    /// Attempts checked at the same time count at once: no more than `max_failures` of them
    /// go on, and the first to fail locks the key out for the others' successors.
    #[test]
    fn limits_count_attempts_in_progress() {
        let l = limits(3);
        let t0 = 5_000;
        let mut a = Attempts::default();
        let mut started = 0;
        for _ in 0..10 {
            if l.check(&a, t0).is_ok() {
                a = l.begin(Some(a), t0);
                started += 1;
            }
        }
        assert_eq!(started, 3, "only as many attempts as failures are allowed");
        let (a, lock) = l.failed(a, t0);
        assert!(lock.is_some());
        assert!(l.check(&a, t0).is_err());
        let (a, lock) = l.failed(a, t0);
        assert_eq!(lock, None, "the lockout started once");
        assert!(l.check(&a, t0 + 60_000 + 10_001).is_ok());
        // Failures outside the window do not add up.
        let old = l.begin(None, t0);
        let later = l.begin(Some(old), t0 + 61_000);
        assert_eq!((later.failures, later.first_at), (1, t0 + 61_000));
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
