//! The Linux desktop side of deskport's RDP server and client — what a session shows and
//! drives, without any RDP:
//!
//! - [`Desktop`]: a screen to capture and send input to; [`DesktopProvider`] hands one out
//!   per logon ([`Shadow`]: one shared display; [`sessions::VirtualSessions`]: one X session
//!   per account, kept across reconnections);
//! - [`x11`]: an X11 display as a [`Desktop`] (XDamage, MIT-SHM, XFIXES pointer, XTEST input,
//!   RandR resize); [`keymap`]: RDP scancodes ↔ evdev keycodes, keysyms ↔ characters;
//! - [`clipboard`]: the desktop's text clipboard (the X worker), for the server's sessions and
//!   the client's window alike;
//! - [`diff`]: how a new frame differs from what a viewer shows, as copies, fills and pixels
//!   (the RDP server's encoders and the browser console's relay both start from it);
//! - [`launch`]: X servers and the programs of a session — the one launcher, used by virtual
//!   sessions, `deskport up` and the test fixtures.
//!
//! Invariant: nothing here knows RDP (PDUs, channels, codecs are `deskport-rdp`'s,
//! `deskport-client`'s and `deskport-proto`'s).

pub mod clipboard;
pub mod diff;
pub mod drives;
pub mod keymap;
pub mod launch;
pub mod sessions;
pub mod sound;
pub mod x11;

use std::sync::Arc;

/// A captured screen: 32-bit pixels `B, G, R, X` (little-endian `0x00RRGGBB`), rows top-down.
#[derive(Clone)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub data: Arc<Vec<u8>>,
    /// Equal generations (other than 0) of one desktop mean equal pixels: a session skips
    /// comparing a frame it has already seen. 0 means unknown (compare the pixels).
    pub generation: u64,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

impl Frame {
    pub fn stride(&self) -> usize {
        usize::from(self.width) * 4
    }

    /// A frame painted pixel by pixel (`paint(x, y)` gives blue, green, red): for tests.
    pub fn painted(w: u16, h: u16, paint: impl Fn(u16, u16) -> [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(usize::from(w) * usize::from(h) * 4);
        for y in 0..h {
            for x in 0..w {
                let [b, g, r] = paint(x, y);
                data.extend_from_slice(&[b, g, r, 0]);
            }
        }
        Self {
            width: w,
            height: h,
            data: Arc::new(data),
            generation: 0,
        }
    }
}

/// The pointer's image: `argb` holds premultiplied `0xAARRGGBB` pixels, rows top-down (as
/// XFIXES reports them).
#[derive(Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Changes whenever the image does.
    pub serial: u32,
    pub width: u16,
    pub height: u16,
    pub hotspot: (u16, u16),
    pub argb: Arc<Vec<u32>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cursor(#{} {}x{} hot {:?})",
            self.serial, self.width, self.height, self.hotspot
        )
    }
}

/// A screen area: x, y, width, height.
pub type Area = (u16, u16, u16, u16);

/// Mouse buttons the server injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Left,
    Middle,
    Right,
    /// Extra buttons (back/forward).
    X1,
    X2,
}

/// An input event, already translated from RDP to desktop terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A key by its RDP scancode (set 1); `extended` is the E0 prefix.
    Key {
        scancode: u8,
        extended: bool,
        down: bool,
    },
    /// A UTF-16 code unit typed without a scancode.
    Unicode {
        unit: u16,
        down: bool,
    },
    Move {
        x: u16,
        y: u16,
    },
    Button {
        button: Button,
        down: bool,
    },
    /// Wheel steps: positive is up / right (one notch = 120, as in RDP).
    Wheel {
        vertical: i32,
        horizontal: i32,
    },
}

/// A screen to capture and to send input to.
pub trait Desktop: Send + Sync + std::fmt::Debug {
    /// The screen size in pixels.
    fn size(&self) -> (u16, u16);
    /// The whole screen as it is now.
    fn capture(&self) -> anyhow::Result<Frame>;
    /// Injects one input event.
    fn input(&self, event: Input) -> anyhow::Result<()>;
    /// The areas `(x, y, width, height)` drawn to after the frame of `generation`, if the
    /// desktop tracks them (then sessions need not compare pixels); `None` if it does not or
    /// no longer remembers that generation.
    fn changes_since(&self, generation: u64) -> Option<Vec<Area>> {
        let _ = generation;
        None
    }
    /// A counter that grows whenever something is drawn on the screen, if the desktop reports
    /// drawing as it happens (then a session reads the screen at once rather than on a timer).
    fn drawn(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Starts the desktop's text clipboard, if it has one.
    fn clipboard(&self) -> Option<anyhow::Result<clipboard::Clipboard>> {
        None
    }
    /// The pointer's image as of the last capture, if the desktop knows it.
    fn cursor(&self) -> Option<Cursor> {
        None
    }
    /// The last time a program moved the pointer (not input from a client): a serial that
    /// grows with each such move, and the position, as of the last capture.
    fn pointer_moved(&self) -> Option<(u64, (u16, u16))> {
        None
    }
    /// Whether [`Desktop::resize`] can work (the client may then ask for other sizes).
    fn can_resize(&self) -> bool {
        false
    }
    /// Changes the screen to `width` x `height`; the size it has afterwards.
    fn resize(&self, width: u16, height: u16) -> anyhow::Result<(u16, u16)> {
        anyhow::bail!("this desktop cannot change its size to {width}x{height}")
    }
    /// Starts capturing what the desktop's programs play (PCM at `rate` Hz, `channels`
    /// channels, in chunks of about `chunk`), if the desktop has sound of its own.
    fn sound(
        &self,
        rate: u32,
        channels: u16,
        chunk: std::time::Duration,
    ) -> Option<anyhow::Result<sound::SoundCapture>> {
        let _ = (rate, channels, chunk);
        None
    }
    /// Gives the desktop the client's keyboard layout (a Windows layout identifier, e.g.
    /// `0x407` German), so that keys typed by position give the client's characters. A
    /// desktop of its own does; a shared one keeps its owner's layout (the default).
    fn set_keyboard_layout(&self, klid: u32) -> anyhow::Result<()> {
        let _ = klid;
        Ok(())
    }
    /// Whose home the client's drives go into (`~/thinclient_drives`), if the desktop is a
    /// session of its own (a shared one takes no drives).
    fn drives_home(&self) -> Option<drives::DrivesHome> {
        None
    }
}

/// Gives each logon its desktop.
pub trait DesktopProvider: Send + Sync + std::fmt::Debug {
    /// The desktop of `account`; `requested` is the client's desktop size, `remote` its
    /// address.
    fn desktop_for(
        &self,
        account: &str,
        requested: (u16, u16),
        remote: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Arc<dyn Desktop>>;
    /// The size to announce before the account is known (the shadowed display's size).
    fn initial_size(&self, requested: (u16, u16)) -> (u16, u16);
    /// Whether a session takes the size the client asks for (virtual desktops) rather than
    /// the provider's (a shared display).
    fn honors_client_size(&self) -> bool {
        false
    }
    /// Whether its desktops may change size when the client asks (display control).
    fn can_resize(&self) -> bool {
        false
    }
}

/// Shadowing: every logon sees the same existing display.
#[derive(Debug)]
pub struct Shadow {
    pub desktop: Arc<dyn Desktop>,
}

impl DesktopProvider for Shadow {
    fn desktop_for(
        &self,
        _account: &str,
        _requested: (u16, u16),
        _remote: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Arc<dyn Desktop>> {
        Ok(self.desktop.clone())
    }

    fn initial_size(&self, _requested: (u16, u16)) -> (u16, u16) {
        self.desktop.size()
    }
}
