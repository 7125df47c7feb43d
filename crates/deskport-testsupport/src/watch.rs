//! A watcher of the frame code on a client's display: which frame the client shows, and since
//! when (see [`crate::framecode`] and [`crate::workload`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};

use crate::framecode;
use crate::workload::monotonic_ns;

/// What a [`FrameWatcher`] saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Frame number → CLOCK_MONOTONIC ns when its code first showed.
    pub first_seen: HashMap<u16, u64>,
    /// The code showing at the last poll.
    pub current: Option<u16>,
    pub polls: u64,
    /// CLOCK_MONOTONIC ns of the first and the last poll.
    pub span_ns: (u64, u64),
}

impl Seen {
    /// Polls per second.
    pub fn poll_rate(&self) -> f64 {
        let secs = (self.span_ns.1.saturating_sub(self.span_ns.0)) as f64 / 1e9;
        if secs > 0.0 {
            self.polls as f64 / secs
        } else {
            0.0
        }
    }
}

/// Polls the frame code at `origin` on an X display with GetImage (only the sampled rows of
/// the code: a few kilobytes a poll) every `interval`, in a thread, until dropped or
/// [`FrameWatcher::finish`]ed.
#[derive(Debug)]
pub struct FrameWatcher {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl FrameWatcher {
    /// Starts watching `display`, whose code's top-left corner is at `origin`.
    pub fn start(display: &str, origin: (u32, u32), interval: Duration) -> anyhow::Result<Self> {
        let (conn, screen_num) = crate::x_connect(display)?;
        let root = conn.setup().roots[screen_num].root;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (seen.clone(), stop.clone());
        let (x, y) = (
            origin.0 as i16,
            (origin.1 as u16 + framecode::SAMPLE_ROWS.0) as i16,
        );
        let (w, rows) = (framecode::SIZE.0, framecode::SAMPLE_ROWS.1);
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            while !flag.load(Ordering::Relaxed) {
                let reply = conn
                    .get_image(ImageFormat::Z_PIXMAP, root, x, y, w, rows, !0)?
                    .reply()?;
                let now = monotonic_ns();
                let code = framecode::decode_bgrx(&reply.data, usize::from(w) * 4, rows.into());
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if s.polls == 0 {
                        s.span_ns.0 = now;
                    }
                    s.polls += 1;
                    s.span_ns.1 = now;
                    s.current = code;
                    if let Some(n) = code {
                        s.first_seen.entry(n).or_insert(now);
                    }
                }
                std::thread::sleep(interval);
            }
            Ok(())
        });
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// What was seen so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops watching; what was seen, or the error that stopped the watcher.
    pub fn finish(mut self) -> anyhow::Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))??;
        }
        Ok(self.seen())
    }
}

impl Drop for FrameWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
