//! An X11 display as a [`Desktop`]: screen capture over the X protocol, input through the
//! XTEST extension.

use std::sync::Mutex;

use anyhow::Context as _;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat, ImageOrder};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::{keymap, Button, Desktop, Frame, Input};

/// A connection to one X display.
pub struct X11Desktop {
    display: String,
    conn: Mutex<RustConnection>,
    root: xproto::Window,
    width: u16,
    height: u16,
}

impl std::fmt::Debug for X11Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X11Desktop({} {}x{})",
            self.display, self.width, self.height
        )
    }
}

impl X11Desktop {
    /// Connects to `display` (e.g. `:0`) and checks that it can be captured and driven.
    pub fn connect(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connect to X display {display}"))?;
        let setup = conn.setup();
        let screen = &setup.roots[screen_num];
        let (root, width, height) = (screen.root, screen.width_in_pixels, screen.height_in_pixels);
        let format = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == screen.root_depth)
            .context("no pixmap format for the root depth")?;
        anyhow::ensure!(
            format.bits_per_pixel == 32 && setup.image_byte_order == ImageOrder::LSB_FIRST,
            "display {display} has {} bits per pixel ({:?}); deskport needs 24/32-bit TrueColor",
            format.bits_per_pixel,
            setup.image_byte_order
        );
        conn.xtest_get_version(2, 2)
            .context("query XTEST")?
            .reply()
            .with_context(|| {
                format!("display {display} has no XTEST extension (needed for input)")
            })?;
        Ok(Self {
            display: display.to_owned(),
            conn: Mutex::new(conn),
            root,
            width,
            height,
        })
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> anyhow::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)?;
        conn.flush()?;
        Ok(())
    }
}

impl Desktop for X11Desktop {
    fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    fn capture(&self) -> anyhow::Result<Frame> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let reply = conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                self.width,
                self.height,
                !0,
            )?
            .reply()
            .context("capture the screen")?;
        let expected = usize::from(self.width) * usize::from(self.height) * 4;
        anyhow::ensure!(
            reply.data.len() >= expected,
            "short screen capture ({} bytes)",
            reply.data.len()
        );
        let mut data = reply.data;
        data.truncate(expected);
        Ok(Frame {
            width: self.width,
            height: self.height,
            data: std::sync::Arc::new(data),
        })
    }

    fn input(&self, event: Input) -> anyhow::Result<()> {
        match event {
            Input::Key {
                scancode,
                extended,
                down,
            } => match keymap::x_keycode(scancode, extended) {
                Some(keycode) => {
                    let kind = if down {
                        xproto::KEY_PRESS_EVENT
                    } else {
                        xproto::KEY_RELEASE_EVENT
                    };
                    self.fake(kind, keycode, 0, 0)
                }
                None => {
                    tracing::debug!(scancode, extended, "Key without an X keycode ignored");
                    Ok(())
                }
            },
            Input::Unicode { unit, .. } => {
                tracing::debug!(unit, "Unicode keyboard input is not mapped on this desktop");
                Ok(())
            }
            Input::Move { x, y } => {
                let (x, y) = (
                    x.min(self.width.saturating_sub(1)),
                    y.min(self.height.saturating_sub(1)),
                );
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, x as i16, y as i16)
            }
            Input::Button { button, down } => {
                let detail = match button {
                    Button::Left => 1,
                    Button::Middle => 2,
                    Button::Right => 3,
                    Button::X1 => 8,
                    Button::X2 => 9,
                };
                let kind = if down {
                    xproto::BUTTON_PRESS_EVENT
                } else {
                    xproto::BUTTON_RELEASE_EVENT
                };
                self.fake(kind, detail, 0, 0)
            }
            Input::Wheel {
                vertical,
                horizontal,
            } => {
                // X reports wheel notches as clicks of buttons 4/5 (up/down) and 6/7 (left/right).
                let clicks = |amount: i32, positive: u8, negative: u8| {
                    let n = (amount.abs() + 60) / 120;
                    let button = if amount > 0 { positive } else { negative };
                    (0..n.max(i32::from(amount != 0))).map(move |_| button)
                };
                for button in clicks(vertical, 4, 5).chain(clicks(horizontal, 7, 6)) {
                    self.fake(xproto::BUTTON_PRESS_EVENT, button, 0, 0)?;
                    self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)?;
                }
                Ok(())
            }
        }
    }
}
