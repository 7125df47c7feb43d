//! The screen as the client sees it: at each frame tick the desktop is captured and what
//! changed since the last frame sent — the pointer's shape, a program's pointer move, the
//! pixels (as the [`Diff`] of what the client shows, in ops) — goes to the client through the
//! session's [`ScreenEncoder`].

use std::sync::Arc;

use deskport_desktop::Desktop;

use crate::encode::diff::Diff;
use crate::encode::{pointer, ScreenEncoder};

/// Frames in flight at most when the client acknowledges frames (as FreeRDP advertises and
/// xrdp uses): the screen is read again only when one of them is acknowledged, so a slow
/// client or link gets fewer, current frames instead of a queue of stale ones.
pub(super) const WINDOW: u32 = 2;

/// What the client has been sent of the screen.
#[derive(Debug)]
pub struct Screen {
    desktop: Arc<dyn Desktop>,
    encoder: Box<dyn ScreenEncoder>,
    /// The client takes 32-bit New Pointer updates (else 24-bit Color Pointer ones).
    new_pointer: bool,
    /// The generation and size of the last frame sent.
    sent: Option<(u64, u16, u16)>,
    /// What the client shows.
    diff: Diff,
    sent_cursor: Option<u32>,
    /// The serial of the last program's pointer move the client was told about.
    sent_pointer_move: u64,
}

impl Screen {
    pub fn new(
        desktop: Arc<dyn Desktop>,
        encoder: Box<dyn ScreenEncoder>,
        new_pointer: bool,
    ) -> Self {
        // Moves from before this session are not news.
        let sent_pointer_move = desktop.pointer_moved().map_or(0, |(s, _)| s);
        Self {
            desktop,
            encoder,
            new_pointer,
            sent: None,
            diff: Diff::new(),
            sent_cursor: None,
            sent_pointer_move,
        }
    }

    /// Whether the client can take another frame (fewer than [`WINDOW`] unacknowledged).
    pub fn ready(&self) -> bool {
        self.encoder.unacknowledged().is_none_or(|n| n < WINDOW)
    }

    /// The next update sends everything again (a new screen size; the pointer too).
    pub fn resend(&mut self) {
        self.sent = None;
        self.diff.forget();
        self.sent_cursor = None;
    }

    /// The client acknowledged frame `id`.
    pub fn acknowledged(&mut self, id: u32) {
        self.encoder.acknowledged(id);
    }

    /// Captures the desktop and appends to `out` what the client needs to show it.
    pub async fn update(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let d = self.desktop.clone();
        let since = self.sent.map(|s| s.0);
        let (frame, cursor, changes) = tokio::task::spawn_blocking(move || {
            d.capture()
                .map(|f| (f, d.cursor(), since.and_then(|g| d.changes_since(g))))
        })
        .await??;
        if let Some(cursor) = cursor.filter(|c| Some(c.serial) != self.sent_cursor) {
            pointer::pointer_update(&cursor, self.new_pointer, out)?;
            self.sent_cursor = Some(cursor.serial);
        }
        // A program moved the pointer: the client's follows (moves from input do not come
        // back).
        if let Some((serial, (x, y))) = self
            .desktop
            .pointer_moved()
            .filter(|m| m.0 > self.sent_pointer_move)
        {
            tracing::debug!(x, y, "A program moved the pointer");
            pointer::pointer_position(x, y, out)?;
            self.sent_pointer_move = serial;
        }
        let same_size = self
            .sent
            .is_some_and(|s| (s.1, s.2) == (frame.width, frame.height));
        if same_size && frame.generation != 0 && since == Some(frame.generation) {
            return Ok(());
        }
        // Where the desktop says what changed since the last frame sent, only there.
        let damage = changes.as_deref().filter(|_| same_size);
        let ops = self.diff.ops(&frame, damage, self.encoder.op_kinds());
        if !ops.is_empty() {
            self.encoder.encode(&frame, &ops, out)?;
        }
        self.sent = Some((frame.generation, frame.width, frame.height));
        Ok(())
    }

    /// Sends with `encoder` from now on, the whole screen first; the encoder used until now.
    pub fn set_encoder(&mut self, encoder: Box<dyn ScreenEncoder>) -> Box<dyn ScreenEncoder> {
        self.sent = None;
        self.diff.forget();
        std::mem::replace(&mut self.encoder, encoder)
    }

    /// Frames the client has not acknowledged ([`ScreenEncoder::unacknowledged`]).
    #[cfg(test)]
    pub fn unacknowledged(&self) -> Option<u32> {
        self.encoder.unacknowledged()
    }
}
