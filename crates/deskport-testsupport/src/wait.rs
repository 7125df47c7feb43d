use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it returns `Some`, or panics after `timeout` with
/// `what` in the message. Tests wait for state, never for a fixed time.
pub fn wait_until<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
