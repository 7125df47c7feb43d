//! When to read the screen: as soon as the desktop reports drawing — a moment later, so that
//! a burst of drawing is read whole — but no sooner than [`MIN_GAP`] after the last frame;
//! a frame flow control held back is taken as soon as the client acknowledges one. (The
//! session's timer still ticks for desktops that do not report drawing, and for the pointer.)

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long after the first report of drawing the screen is read.
const SETTLE: Duration = Duration::from_millis(2);

/// Frames at least this far apart.
const MIN_GAP: Duration = Duration::from_millis(8);

#[derive(Debug)]
pub struct Pacer {
    drawn: Option<watch::Receiver<u64>>,
    due: Option<Instant>,
    last: Option<Instant>,
    held: bool,
}

impl Pacer {
    pub fn new(drawn: Option<watch::Receiver<u64>>) -> Self {
        Self {
            drawn,
            due: None,
            last: None,
            held: false,
        }
    }

    /// Resolves when a frame is due. Cancel-safe.
    pub async fn due(&mut self) {
        loop {
            let due = self.due;
            tokio::select! {
                () = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.due = None;
                    return;
                }
                changed = async {
                    match self.drawn.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => match changed {
                    Ok(()) => self.schedule(Instant::now() + SETTLE),
                    Err(_) => self.drawn = None,
                },
            }
        }
    }

    /// A frame was read and sent.
    pub fn sent(&mut self) {
        self.last = Some(Instant::now());
        self.held = false;
    }

    /// A frame was due but flow control held it back.
    pub fn held(&mut self) {
        self.held = true;
    }

    /// The client acknowledged a frame: one held back is due now.
    pub fn released(&mut self) {
        if self.held {
            self.schedule(Instant::now());
        }
    }

    fn schedule(&mut self, at: Instant) {
        let at = match self.last {
            Some(last) => at.max(last + MIN_GAP),
            None => at,
        };
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }
}
