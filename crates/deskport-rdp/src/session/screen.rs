//! The screen as the client sees it: at each frame tick the desktop is captured and what
//! changed since the last frame sent — the pointer's shape, a program's pointer move, the
//! pixels — goes to the client through the session's [`ScreenEncoder`].

use std::sync::Arc;

use deskport_desktop::{Desktop, Frame};

use crate::encode::{pointer, Changes, ScreenEncoder};

/// What the client has been sent of the screen.
#[derive(Debug)]
pub struct Screen {
    desktop: Arc<dyn Desktop>,
    encoder: Box<dyn ScreenEncoder>,
    /// The client takes 32-bit New Pointer updates (else 24-bit Color Pointer ones).
    new_pointer: bool,
    /// The generation and size of the last frame sent.
    sent: Option<(u64, u16, u16)>,
    /// The last frame's pixels, only for desktops that cannot say what changed (then it is
    /// compared); holding it otherwise would make the desktop copy its screen before updating
    /// it.
    previous: Option<Frame>,
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
            previous: None,
            sent_cursor: None,
            sent_pointer_move,
        }
    }

    /// The next update sends everything again (a new screen size; the pointer too).
    pub fn resend(&mut self) {
        self.sent = None;
        self.previous = None;
        self.sent_cursor = None;
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
        let tracked = changes.is_some();
        let changes = match &changes {
            // The desktop knows what changed since the last frame sent.
            Some(areas) if same_size => Changes::Areas(areas),
            _ => Changes::Since(self.previous.as_ref()),
        };
        self.encoder.encode(&frame, changes, out)?;
        self.sent = Some((frame.generation, frame.width, frame.height));
        self.previous = (!tracked).then_some(frame);
        Ok(())
    }
}
