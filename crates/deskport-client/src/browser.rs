//! The browser console's relay: this client's session as a third frontend (beside the window
//! and the screenshot) whose screen is a canvas in a web page, reached over a WebSocket the
//! manager serves. This module is the relay's protocol and logic, without any I/O: the
//! manager moves the messages.
//!
//! **To the browser** ([`Outgoing`]): what changed on the desktop, as frames of ops — the ops
//! of [`deskport_desktop::diff`] (copies of what moved, fills of flat areas, the rest as
//! pieces of lossless PNG atlases, indexed where a piece has few colours) against what the
//! canvas shows, which the relay knows exactly — plus
//! the desktop's size, the pointer's shape and the desktop's clipboard. The browser
//! acknowledges each frame once painted; while [`WINDOW`] frames are unacknowledged, damage
//! accumulates and is sent as one frame later (so a slow browser or link sees fewer, larger
//! frames, and latency stays bounded instead of a queue growing).
//!
//! **From the browser** ([`FromBrowser`], JSON text messages): keys as `KeyboardEvent.code`
//! (the physical key, so the session's own layout decides the character, whatever the
//! browser's layout), composed text and IME results as Unicode, the pointer, wheel, buttons,
//! Ctrl+Alt+Del, "release everything" when the page loses focus, clipboard text and the size
//! of the tab.
//!
//! Binary messages, little-endian:
//! - `1` frame: `u32 id`, then ops: `1` copy `sx sy dx dy w h` (u16); `2` fill `r g b` (u8),
//!   `u16 n`, n × `x y w h`; `3` atlas `u8 format` (1 PNG), `u32 len`, bytes: an image file,
//!   the frame's atlas number k for the k-th of them (they come first); `4` piece
//!   `atlas x y w h top` (u16): draw the atlas's rows `top..top + h`, columns `0..w`, at
//!   `x, y`.
//! - `2` size: `w h` (u16): the canvas is cleared to this size; a whole frame follows.
//! - `3` pointer: `hotx hoty w h` (u16), then a PNG (RGBA).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskport_desktop::diff::{Diff, Op, OpKinds, Rect};
use deskport_desktop::{Area, Frame};
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::mouse_x::PointerXFlags;
use ironrdp_pdu::input::{MousePdu, MouseXPdu};
use ironrdp_session::image::DecodedImage;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::session::{Frontend, PointerShape};

/// The WebSocket subprotocol the page asks for (the token travels as a second one,
/// `token.SECRET`, since a browser cannot set other headers on a WebSocket).
pub const PROTOCOL: &str = "deskport.console.v1";

/// Frames sent and not yet acknowledged, at most.
pub const WINDOW: u32 = 2;

/// Damage is gathered this long after the last update before a frame goes (a server's
/// frame arrives in several PDUs) ...
const GATHER: Duration = Duration::from_millis(2);
/// ... and at most this long after the first.
const GATHER_MAX: Duration = Duration::from_millis(8);

/// A text message from the browser longer than this is refused (clipboard text included).
pub const MAX_MESSAGE: usize = 1 << 20;

/// A message for the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Binary(Vec<u8>),
    Text(String),
}

impl Outgoing {
    /// A JSON text message `{"t": kind, ...fields}`.
    pub fn json(kind: &str, fields: serde_json::Value) -> Self {
        let mut object = serde_json::Map::new();
        object.insert("t".into(), kind.into());
        if let serde_json::Value::Object(more) = fields {
            object.extend(more);
        }
        Self::Text(serde_json::Value::Object(object).to_string())
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Binary(b) => b.len(),
            Self::Text(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message from the browser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
pub enum FromBrowser {
    /// The first message: who logs on, and the size of the tab.
    Logon {
        user: String,
        password: String,
        #[serde(default)]
        domain: String,
        width: u32,
        height: u32,
    },
    /// Frame `frame` (and every one before it) is painted.
    Ack { frame: u32 },
    /// A key went down or up: `code` is `KeyboardEvent.code`.
    Key { code: String, down: bool },
    /// Text typed as characters (composed, IME, keys without a code).
    Text { text: String },
    /// The pointer moved.
    Mouse { x: u32, y: u32 },
    /// A button: `KeyboardEvent.button`'s numbering (0 left, 1 middle, 2 right, 3 back, 4
    /// forward).
    Button {
        button: u8,
        down: bool,
        x: u32,
        y: u32,
    },
    /// The wheel turned by `delta` (120 a notch, positive away from the user).
    Wheel {
        x: u32,
        y: u32,
        delta: i32,
        #[serde(default)]
        horizontal: bool,
    },
    /// Ctrl+Alt+Del.
    Cad,
    /// The page lost focus: release every key and button held.
    Release,
    /// Text the user copied in the browser.
    Clipboard { text: String },
    /// The tab has this size now.
    Resize { width: u32, height: u32 },
}

impl FromBrowser {
    /// Reads one text message; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_MESSAGE {
            return Err(format!(
                "a message of {} bytes is longer than the {MAX_MESSAGE} allowed",
                text.len()
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("not a console message: {e}"))
    }
}

/// The desktop size a browser asks for, made one an RDP server takes: within 200..=8192 on
/// each side, the width even.
pub fn session_size(width: u32, height: u32) -> (u16, u16) {
    let w = width.clamp(200, 8192) & !1;
    let h = height.clamp(200, 8192);
    (w as u16, h as u16)
}

/// The set-1 scancode of the key `code` (`KeyboardEvent.code`) and whether it is an extended
/// (E0) key; `None` for codes without one.
pub fn scancode(code: &str) -> Option<(u8, bool)> {
    let letters = "QWERTYUIOP";
    let home = "ASDFGHJKL";
    let bottom = "ZXCVBNM";
    if let Some(letter) = code.strip_prefix("Key").filter(|l| l.len() == 1) {
        let c = letter.chars().next()?;
        for (row, first) in [(letters, 0x10u8), (home, 0x1e), (bottom, 0x2c)] {
            if let Some(i) = row.find(c) {
                return Some((first + i as u8, false));
            }
        }
        return None;
    }
    if let Some(digit) = code.strip_prefix("Digit").filter(|d| d.len() == 1) {
        let d = digit.chars().next()?.to_digit(10)? as u8;
        return Some((if d == 0 { 0x0b } else { 0x01 + d }, false));
    }
    if let Some(n) = code.strip_prefix('F').and_then(|n| n.parse::<u8>().ok()) {
        return match n {
            1..=10 => Some((0x3a + n, false)),
            11 => Some((0x57, false)),
            12 => Some((0x58, false)),
            13..=24 => Some((0x64 + n - 13, false)),
            _ => None,
        };
    }
    let (sc, extended) = match code {
        "Escape" => (0x01, false),
        "Minus" => (0x0c, false),
        "Equal" => (0x0d, false),
        "Backspace" => (0x0e, false),
        "Tab" => (0x0f, false),
        "BracketLeft" => (0x1a, false),
        "BracketRight" => (0x1b, false),
        "Enter" => (0x1c, false),
        "ControlLeft" => (0x1d, false),
        "Semicolon" => (0x27, false),
        "Quote" => (0x28, false),
        "Backquote" => (0x29, false),
        "ShiftLeft" => (0x2a, false),
        "Backslash" => (0x2b, false),
        "Comma" => (0x33, false),
        "Period" => (0x34, false),
        "Slash" => (0x35, false),
        "ShiftRight" => (0x36, false),
        "NumpadMultiply" => (0x37, false),
        "AltLeft" => (0x38, false),
        "Space" => (0x39, false),
        "CapsLock" => (0x3a, false),
        "NumLock" => (0x45, false),
        "ScrollLock" => (0x46, false),
        "Numpad7" => (0x47, false),
        "Numpad8" => (0x48, false),
        "Numpad9" => (0x49, false),
        "NumpadSubtract" => (0x4a, false),
        "Numpad4" => (0x4b, false),
        "Numpad5" => (0x4c, false),
        "Numpad6" => (0x4d, false),
        "NumpadAdd" => (0x4e, false),
        "Numpad1" => (0x4f, false),
        "Numpad2" => (0x50, false),
        "Numpad3" => (0x51, false),
        "Numpad0" => (0x52, false),
        "NumpadDecimal" => (0x53, false),
        "IntlBackslash" => (0x56, false),
        "IntlRo" => (0x73, false),
        "IntlYen" => (0x7d, false),
        "KanaMode" => (0x70, false),
        "Convert" => (0x79, false),
        "NonConvert" => (0x7b, false),
        "NumpadEqual" => (0x59, false),
        "NumpadComma" => (0x7e, false),
        "NumpadEnter" => (0x1c, true),
        "ControlRight" => (0x1d, true),
        "NumpadDivide" => (0x35, true),
        "PrintScreen" => (0x37, true),
        "AltRight" => (0x38, true),
        "Home" => (0x47, true),
        "ArrowUp" => (0x48, true),
        "PageUp" => (0x49, true),
        "ArrowLeft" => (0x4b, true),
        "ArrowRight" => (0x4d, true),
        "End" => (0x4f, true),
        "ArrowDown" => (0x50, true),
        "PageDown" => (0x51, true),
        "Insert" => (0x52, true),
        "Delete" => (0x53, true),
        "MetaLeft" | "OSLeft" => (0x5b, true),
        "MetaRight" | "OSRight" => (0x5c, true),
        "ContextMenu" => (0x5d, true),
        "AudioVolumeMute" => (0x20, true),
        "AudioVolumeDown" => (0x2e, true),
        "AudioVolumeUp" => (0x30, true),
        "MediaPlayPause" => (0x22, true),
        "MediaStop" => (0x24, true),
        "MediaTrackPrevious" => (0x10, true),
        "MediaTrackNext" => (0x19, true),
        _ => return None,
    };
    Some((sc, extended))
}

/// Turns the browser's input into RDP input events, keeping what is held so that it can be
/// released when the page loses focus.
#[derive(Debug, Default)]
pub struct Input {
    keys: Vec<(u8, bool)>,
    buttons: Vec<u8>,
    at: (u16, u16),
}

fn key_event(sc: u8, extended: bool, down: bool) -> FastPathInputEvent {
    let mut flags = KeyboardFlags::empty();
    if extended {
        flags |= KeyboardFlags::EXTENDED;
    }
    if !down {
        flags |= KeyboardFlags::RELEASE;
    }
    FastPathInputEvent::KeyboardEvent(flags, sc)
}

fn position(x: u32, y: u32) -> (u16, u16) {
    (
        x.min(u32::from(u16::MAX)) as u16,
        y.min(u32::from(u16::MAX)) as u16,
    )
}

impl Input {
    /// The events for `message` (an input message; others give none). An unknown key code is
    /// an error the page is told about.
    pub fn events(&mut self, message: &FromBrowser) -> Result<Vec<FastPathInputEvent>, String> {
        Ok(match message {
            FromBrowser::Key { code, down } => {
                let (sc, extended) =
                    scancode(code).ok_or_else(|| format!("no scancode for the key {code:?}"))?;
                if *down {
                    if !self.keys.contains(&(sc, extended)) {
                        self.keys.push((sc, extended));
                    }
                } else {
                    self.keys.retain(|k| *k != (sc, extended));
                }
                vec![key_event(sc, extended, *down)]
            }
            FromBrowser::Text { text } => text
                .encode_utf16()
                .flat_map(|unit| {
                    [
                        FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::empty(), unit),
                        FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::RELEASE, unit),
                    ]
                })
                .collect(),
            FromBrowser::Mouse { x, y } => {
                self.at = position(*x, *y);
                vec![self.mouse(PointerFlags::MOVE, 0)]
            }
            FromBrowser::Button { button, down, x, y } => {
                self.at = position(*x, *y);
                if *down {
                    if !self.buttons.contains(button) {
                        self.buttons.push(*button);
                    }
                } else {
                    self.buttons.retain(|b| b != button);
                }
                vec![self
                    .button(*button, *down)
                    .ok_or_else(|| format!("no mouse button {button}"))?]
            }
            FromBrowser::Wheel {
                x,
                y,
                delta,
                horizontal,
            } => {
                self.at = position(*x, *y);
                let axis = if *horizontal {
                    PointerFlags::HORIZONTAL_WHEEL
                } else {
                    PointerFlags::VERTICAL_WHEEL
                };
                // A turn of more than the 9-bit field holds goes as several events (and a
                // page cannot flood the server with one message).
                let mut left = (*delta).clamp(-120 * 20, 120 * 20);
                let mut events = vec![self.mouse(PointerFlags::MOVE, 0)];
                while left != 0 {
                    let step = left.clamp(-255, 255);
                    events.push(self.mouse(axis, step as i16));
                    left -= step;
                }
                events
            }
            FromBrowser::Cad => {
                let keys = [(0x1d, false), (0x38, false), (0x53, true)];
                let mut events: Vec<_> = keys.iter().map(|&(s, e)| key_event(s, e, true)).collect();
                events.extend(keys.iter().rev().map(|&(s, e)| key_event(s, e, false)));
                events
            }
            FromBrowser::Release => self.release(),
            _ => Vec::new(),
        })
    }

    /// Releases every key and button held.
    pub fn release(&mut self) -> Vec<FastPathInputEvent> {
        let mut events: Vec<_> = self
            .keys
            .drain(..)
            .map(|(sc, extended)| key_event(sc, extended, false))
            .collect();
        let buttons: Vec<u8> = self.buttons.drain(..).collect();
        events.extend(buttons.into_iter().filter_map(|b| self.button(b, false)));
        events
    }

    fn mouse(&self, flags: PointerFlags, wheel: i16) -> FastPathInputEvent {
        FastPathInputEvent::MouseEvent(MousePdu {
            flags,
            number_of_wheel_rotation_units: wheel,
            x_position: self.at.0,
            y_position: self.at.1,
        })
    }

    fn button(&self, button: u8, down: bool) -> Option<FastPathInputEvent> {
        let basic = match button {
            0 => Some(PointerFlags::LEFT_BUTTON),
            1 => Some(PointerFlags::MIDDLE_BUTTON_OR_WHEEL),
            2 => Some(PointerFlags::RIGHT_BUTTON),
            _ => None,
        };
        if let Some(mut flags) = basic {
            if down {
                flags |= PointerFlags::DOWN;
            }
            return Some(self.mouse(flags, 0));
        }
        let mut flags = match button {
            3 => PointerXFlags::BUTTON1,
            4 => PointerXFlags::BUTTON2,
            _ => return None,
        };
        if down {
            flags |= PointerXFlags::DOWN;
        }
        Some(FastPathInputEvent::MouseEventEx(MouseXPdu {
            flags,
            x_position: self.at.0,
            y_position: self.at.1,
        }))
    }
}

/// How the pixels of a frame are coded for the browser: lossless PNG files (its decoder is in
/// every browser). A piece of at most 256 colours (text, flat UI: most of a desktop) goes as
/// an indexed PNG, 1, 2, 4 or 8 bits a pixel before deflate, else as RGB. `benches/replay.rs`
/// (deskport-rdp) measures the variants on the heavy workload; the default is the one that
/// wins there on bytes for the CPU it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Picture {
    /// RGB only, the fast deflate level (for comparison).
    PngRgbFast,
    /// Indexed where it can be, the fast deflate level.
    PngFast,
    /// Indexed where it can be, the balanced level.
    #[default]
    PngBalanced,
    /// Indexed where it can be, the highest level.
    PngHigh,
}

impl Picture {
    pub const ALL: [Picture; 4] = [
        Picture::PngRgbFast,
        Picture::PngFast,
        Picture::PngBalanced,
        Picture::PngHigh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Picture::PngRgbFast => "PNG, RGB, fast",
            Picture::PngFast => "PNG, indexed or RGB, fast",
            Picture::PngBalanced => "PNG, indexed or RGB, balanced",
            Picture::PngHigh => "PNG, indexed or RGB, high",
        }
    }

    fn compression(self) -> png::Compression {
        match self {
            Picture::PngRgbFast | Picture::PngFast => png::Compression::Fast,
            Picture::PngBalanced => png::Compression::Balanced,
            Picture::PngHigh => png::Compression::High,
        }
    }
}

/// What the relay has sent, for the manager's log and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub images: AtomicU64,
    pub copies: AtomicU64,
}

/// The frames sent and the browser's acknowledgements, shared between the frontend (which
/// numbers the frames and waits for acknowledgements) and the socket (which records them).
#[derive(Debug, Default)]
pub struct Acks {
    /// The last frame id sent.
    sent: AtomicU32,
    /// The last frame id acknowledged.
    last: AtomicU32,
}

impl Acks {
    /// The browser painted frame `id`. Ids the relay never sent are ignored.
    pub fn acknowledge(&self, id: u32) {
        if id <= self.sent.load(Ordering::Relaxed) {
            self.last.fetch_max(id, Ordering::Relaxed);
        }
    }

    /// Frames sent and not acknowledged yet.
    fn unacknowledged(&self) -> u32 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.last.load(Ordering::Relaxed))
    }

    /// The id of the next frame to send.
    fn next(&self) -> u32 {
        self.sent.load(Ordering::Relaxed) + 1
    }

    /// Frame `id` was sent.
    fn sent(&self, id: u32) {
        self.sent.store(id, Ordering::Relaxed);
    }
}

/// The session's frontend for a browser tab.
#[derive(Debug)]
pub struct Browser {
    out: mpsc::UnboundedSender<Outgoing>,
    acks: Arc<Acks>,
    stats: Arc<Stats>,
    diff: Diff,
    damage: Vec<Area>,
    first: Option<Instant>,
    last: Instant,
    size: (u16, u16),
    closed: bool,
}

impl Browser {
    /// A frontend sending to `out`; the socket side records the browser's acknowledgements
    /// in `acks`.
    pub fn new(out: mpsc::UnboundedSender<Outgoing>, acks: Arc<Acks>, stats: Arc<Stats>) -> Self {
        Self {
            out,
            acks,
            stats,
            diff: Diff::new(),
            damage: Vec::new(),
            first: None,
            last: Instant::now(),
            size: (0, 0),
            closed: false,
        }
    }

    fn send(&mut self, message: Outgoing) {
        self.stats
            .bytes
            .fetch_add(message.len() as u64, Ordering::Relaxed);
        if self.out.send(message).is_err() {
            self.closed = true;
        }
    }

    fn damaged(&mut self, area: Area) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.damage.push(area);
    }
}

impl Frontend for Browser {
    const PIXEL_FORMAT: PixelFormat = PixelFormat::BgrX32;

    fn update(
        &mut self,
        _image: &DecodedImage,
        region: &InclusiveRectangle,
    ) -> anyhow::Result<bool> {
        let (w, h) = self.size;
        let right = region.right.min(w.saturating_sub(1));
        let bottom = region.bottom.min(h.saturating_sub(1));
        if region.left <= right && region.top <= bottom {
            self.damaged((
                region.left,
                region.top,
                right - region.left + 1,
                bottom - region.top + 1,
            ));
        }
        Ok(self.closed)
    }

    fn resized(&mut self, image: &DecodedImage) -> anyhow::Result<()> {
        self.size = (image.width(), image.height());
        self.diff.forget();
        let mut message = vec![2];
        message.extend_from_slice(&image.width().to_le_bytes());
        message.extend_from_slice(&image.height().to_le_bytes());
        self.send(Outgoing::Binary(message));
        self.damage.clear();
        self.damaged((0, 0, image.width(), image.height()));
        Ok(())
    }

    fn resizable(&mut self) -> anyhow::Result<()> {
        self.send(Outgoing::json("resizable", serde_json::json!({})));
        Ok(())
    }

    fn pointer_shape(&mut self, shape: PointerShape) -> anyhow::Result<()> {
        match shape {
            PointerShape::Bitmap(p) => {
                let mut message = vec![3];
                for v in [p.hotspot_x, p.hotspot_y, p.width, p.height] {
                    message.extend_from_slice(&v.to_le_bytes());
                }
                write_png(
                    &mut message,
                    (p.width, p.height),
                    png::ColorType::Rgba,
                    png::BitDepth::Eight,
                    None,
                    Picture::default(),
                    &p.bitmap_data,
                )?;
                self.send(Outgoing::Binary(message));
            }
            PointerShape::Hidden => self.send(Outgoing::json(
                "pointer",
                serde_json::json!({"kind": "hidden"}),
            )),
            PointerShape::Default => self.send(Outgoing::json(
                "pointer",
                serde_json::json!({"kind": "default"}),
            )),
        }
        Ok(())
    }

    fn wake_at(&self) -> Option<Instant> {
        let first = self.first?;
        (self.acks.unacknowledged() < WINDOW).then(|| (self.last + GATHER).min(first + GATHER_MAX))
    }

    fn wake(&mut self, image: &DecodedImage) -> anyhow::Result<bool> {
        self.first = None;
        let damage = std::mem::take(&mut self.damage);
        let frame = Frame {
            width: image.width(),
            height: image.height(),
            data: Arc::new(image.data().to_vec()),
            generation: 0,
        };
        let ops = self.diff.ops(
            &frame,
            Some(&damage),
            OpKinds {
                copy: true,
                fill: true,
            },
        );
        if ops.is_empty() {
            return Ok(self.closed);
        }
        let id = self.acks.next();
        let message = encode_frame(id, &frame, &ops, Picture::default(), &self.stats)?;
        self.acks.sent(id);
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        self.send(Outgoing::Binary(message));
        Ok(self.closed)
    }
}

/// The frame message of `ops`, the pixels taken from `frame` and coded as `picture` says: the
/// frame's pixel pieces gathered into few atlases first (see [`Atlas`]), then the ops in order.
pub fn encode_frame(
    id: u32,
    frame: &Frame,
    ops: &[Op],
    picture: Picture,
    stats: &Stats,
) -> anyhow::Result<Vec<u8>> {
    let mut atlases: Vec<Atlas> = Vec::new();
    let (mut indexed_at, mut rgb_at): (Option<usize>, Option<usize>) = (None, None);
    // Where each Pixels op's piece went: (atlas, its top row there).
    let mut placed = Vec::new();
    for op in ops {
        let Op::Pixels(rect) = op else { continue };
        let piece = Piece::of(frame, *rect, picture != Picture::PngRgbFast);
        let slot = if piece.palette.is_some() {
            &mut indexed_at
        } else {
            &mut rgb_at
        };
        let fits = slot.is_some_and(|i| atlases[i].takes(&piece));
        if !fits {
            // (A piece names its atlas in 16 bits; a frame's pieces are the diff's tiles at
            // most, fewer than that for any screen up to 8192x8192.)
            anyhow::ensure!(
                atlases.len() < usize::from(u16::MAX),
                "a frame of more than {} image atlases",
                u16::MAX
            );
            *slot = Some(atlases.len());
            atlases.push(Atlas::new(piece.palette.is_some()));
        }
        let i = slot.unwrap_or_default();
        let top = atlases[i].add(piece);
        placed.push((i, top));
    }
    let mut out = vec![1];
    out.extend_from_slice(&id.to_le_bytes());
    let put = |out: &mut Vec<u8>, values: &[u16]| {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    for atlas in &atlases {
        out.push(3);
        out.push(1);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        atlas.write(picture, &mut out)?;
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        stats.images.fetch_add(1, Ordering::Relaxed);
    }
    let mut placed = placed.into_iter();
    for op in ops {
        match op {
            Op::Copy { src, dst } => {
                out.push(1);
                put(
                    &mut out,
                    &[src.0, src.1, dst.x, dst.y, dst.width, dst.height],
                );
                stats.copies.fetch_add(1, Ordering::Relaxed);
            }
            Op::Fill { color, rects } => {
                // At most u16::MAX rectangles a fill; more go as several.
                for chunk in rects.chunks(usize::from(u16::MAX)) {
                    out.push(2);
                    out.extend_from_slice(&[(color >> 16) as u8, (color >> 8) as u8, *color as u8]);
                    put(&mut out, &[chunk.len() as u16]);
                    for r in chunk {
                        put(&mut out, &[r.x, r.y, r.width, r.height]);
                    }
                }
            }
            Op::Pixels(rect) => {
                let (atlas, top) = placed.next().unwrap_or_default();
                out.push(4);
                put(
                    &mut out,
                    &[atlas as u16, rect.x, rect.y, rect.width, rect.height, top],
                );
            }
        }
    }
    Ok(out)
}

/// An atlas is at most this high (browsers decode images up to 16384 pixels a side at least).
const ATLAS_HEIGHT: usize = 8192;

/// One piece of a frame's pixels: indexes into its own palette when it has at most 256
/// colours (and palettes are wanted), else `R, G, B` triples.
struct Piece {
    width: u16,
    height: u16,
    palette: Option<Vec<u32>>,
    data: Vec<u8>,
}

impl Piece {
    fn of(frame: &Frame, rect: Rect, palettes: bool) -> Self {
        let (w, h) = (usize::from(rect.width), usize::from(rect.height));
        let stride = frame.stride();
        let row = |y: usize| {
            let start = (usize::from(rect.y) + y) * stride + usize::from(rect.x) * 4;
            &frame.data[start..start + w * 4]
        };
        if palettes {
            if let Some((palette, data)) = palette_of(w, h, row) {
                return Self {
                    width: rect.width,
                    height: rect.height,
                    palette: Some(palette),
                    data,
                };
            }
        }
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for px in row(y).chunks_exact(4) {
                data.extend_from_slice(&[px[2], px[1], px[0]]);
            }
        }
        Self {
            width: rect.width,
            height: rect.height,
            palette: None,
            data,
        }
    }
}

/// A frame's pixel pieces stacked top to bottom in one image: the browser decodes one file
/// instead of one a piece, and the PNG overhead (about 60 bytes a file) is paid once. Pieces
/// of at most 256 colours share one palette (a new atlas starts when it would overflow);
/// the others go to an RGB atlas.
struct Atlas {
    indexed: bool,
    palette: Vec<u32>,
    lookup: std::collections::HashMap<u32, u8>,
    pieces: Vec<Piece>,
    width: u16,
    height: usize,
}

impl Atlas {
    fn new(indexed: bool) -> Self {
        Self {
            indexed,
            palette: Vec::new(),
            lookup: std::collections::HashMap::new(),
            pieces: Vec::new(),
            width: 0,
            height: 0,
        }
    }

    /// Whether `piece` fits: its height, and for an indexed atlas its new colours.
    fn takes(&self, piece: &Piece) -> bool {
        if self.height + usize::from(piece.height) > ATLAS_HEIGHT {
            return false;
        }
        match &piece.palette {
            Some(colours) => {
                let new = colours
                    .iter()
                    .filter(|c| !self.lookup.contains_key(c))
                    .count();
                self.palette.len() + new <= 256
            }
            None => true,
        }
    }

    /// Adds `piece` (which [`Atlas::takes`]); its top row in the atlas.
    fn add(&mut self, mut piece: Piece) -> u16 {
        if let Some(colours) = &piece.palette {
            let map: Vec<u8> = colours
                .iter()
                .map(|c| {
                    *self.lookup.entry(*c).or_insert_with(|| {
                        self.palette.push(*c);
                        (self.palette.len() - 1) as u8
                    })
                })
                .collect();
            for i in &mut piece.data {
                *i = map[usize::from(*i)];
            }
        }
        let top = self.height as u16;
        self.width = self.width.max(piece.width);
        self.height += usize::from(piece.height);
        self.pieces.push(piece);
        top
    }

    /// Appends the atlas as a PNG file.
    fn write(&self, picture: Picture, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let w = usize::from(self.width);
        if !self.indexed {
            let mut rgb = vec![0u8; w * 3 * self.height];
            let mut y0 = 0;
            for p in &self.pieces {
                let pw = usize::from(p.width) * 3;
                for (y, row) in p.data.chunks_exact(pw).enumerate() {
                    let at = (y0 + y) * w * 3;
                    rgb[at..at + pw].copy_from_slice(row);
                }
                y0 += usize::from(p.height);
            }
            return write_png(
                out,
                (self.width, self.height as u16),
                png::ColorType::Rgb,
                png::BitDepth::Eight,
                None,
                picture,
                &rgb,
            );
        }
        let depth: usize = match self.palette.len() {
            0..=2 => 1,
            3..=4 => 2,
            5..=16 => 4,
            _ => 8,
        };
        let per_byte = 8 / depth;
        let row_bytes = w.div_ceil(per_byte);
        let mut packed = vec![0u8; row_bytes * self.height];
        let mut y0 = 0;
        for p in &self.pieces {
            let pw = usize::from(p.width);
            for (y, row) in p.data.chunks_exact(pw).enumerate() {
                let line = &mut packed[(y0 + y) * row_bytes..(y0 + y + 1) * row_bytes];
                for (x, &i) in row.iter().enumerate() {
                    line[x / per_byte] |= i << (8 - depth * (x % per_byte + 1));
                }
            }
            y0 += usize::from(p.height);
        }
        let plte: Vec<u8> = self
            .palette
            .iter()
            .flat_map(|c| [(c >> 16) as u8, (c >> 8) as u8, *c as u8])
            .collect();
        write_png(
            out,
            (self.width, self.height as u16),
            png::ColorType::Indexed,
            match depth {
                1 => png::BitDepth::One,
                2 => png::BitDepth::Two,
                4 => png::BitDepth::Four,
                _ => png::BitDepth::Eight,
            },
            Some(plte),
            picture,
            &packed,
        )
    }
}

/// The colours (`0xRRGGBB`, in order of appearance) of `w`x`h` pixels given as `B, G, R, X`
/// rows, and each pixel's index; `None` past 256 colours.
fn palette_of<'a>(
    w: usize,
    h: usize,
    row: impl Fn(usize) -> &'a [u8],
) -> Option<(Vec<u32>, Vec<u8>)> {
    let mut palette: Vec<u32> = Vec::new();
    let mut lookup: std::collections::HashMap<u32, u8> = std::collections::HashMap::new();
    let mut indexes = Vec::with_capacity(w * h);
    let (mut last, mut last_index) = (u32::MAX, 0u8);
    for y in 0..h {
        for px in row(y).chunks_exact(4) {
            let colour = u32::from(px[2]) << 16 | u32::from(px[1]) << 8 | u32::from(px[0]);
            if colour != last {
                last_index = match lookup.get(&colour) {
                    Some(&i) => i,
                    None => {
                        if palette.len() == 256 {
                            return None;
                        }
                        let i = palette.len() as u8;
                        palette.push(colour);
                        lookup.insert(colour, i);
                        i
                    }
                };
                last = colour;
            }
            indexes.push(last_index);
        }
    }
    Some((palette, indexes))
}

/// Appends a PNG file of `data` (rows as `color` and `depth` lay them out).
fn write_png(
    out: &mut Vec<u8>,
    (width, height): (u16, u16),
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    picture: Picture,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut encoder = png::Encoder::new(&mut *out, u32::from(width), u32::from(height));
    encoder.set_color(color);
    encoder.set_depth(depth);
    encoder.set_compression(picture.compression());
    // Palette images compress best unfiltered (the PNG specification's advice).
    encoder.set_filter(if palette.is_some() {
        png::Filter::NoFilter
    } else {
        png::Filter::Adaptive
    });
    if let Some(p) = palette {
        encoder.set_palette(p);
    }
    let mut writer = encoder
        .write_header()
        .map_err(|e| anyhow::anyhow!("encode a PNG: {e}"))?;
    writer
        .write_image_data(data)
        .map_err(|e| anyhow::anyhow!("encode a PNG: {e}"))?;
    writer
        .finish()
        .map_err(|e| anyhow::anyhow!("encode a PNG: {e}"))
}

/// The fuzz target `console_messages` (see `fuzz/`): each line of `data` as a message from a
/// page, through the parser and into RDP input events: never a panic; every event fits its
/// PDU (wheel turns in the 9-bit field); after a release nothing is held; a logon's size is
/// one a server takes.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let mut input = Input::default();
    for line in data.split(|b| *b == b'\n') {
        let Ok(message) = FromBrowser::parse(&String::from_utf8_lossy(line)) else {
            continue;
        };
        if let FromBrowser::Logon { width, height, .. } = &message {
            let (w, h) = session_size(*width, *height);
            assert!((200..=8192).contains(&w) && (200..=8192).contains(&h) && w % 2 == 0);
        }
        for event in input.events(&message).unwrap_or_default() {
            if let FastPathInputEvent::MouseEvent(m) = event {
                assert!(
                    MousePdu::WHEEL_ROTATION_RANGE.contains(&m.number_of_wheel_rotation_units),
                    "wheel {}",
                    m.number_of_wheel_rotation_units
                );
            }
        }
    }
    let _ = input.release();
    assert!(
        input.release().is_empty(),
        "something still held after a release"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_physical_positions() {
        assert_eq!(scancode("KeyA"), Some((0x1e, false)));
        assert_eq!(scancode("KeyQ"), Some((0x10, false)));
        assert_eq!(scancode("KeyM"), Some((0x32, false)));
        assert_eq!(scancode("Digit1"), Some((0x02, false)));
        assert_eq!(scancode("Digit0"), Some((0x0b, false)));
        assert_eq!(scancode("F1"), Some((0x3b, false)));
        assert_eq!(scancode("F12"), Some((0x58, false)));
        assert_eq!(scancode("ArrowUp"), Some((0x48, true)));
        assert_eq!(scancode("NumpadEnter"), Some((0x1c, true)));
        assert_eq!(scancode("AltRight"), Some((0x38, true)));
        for unknown in [
            "",
            "KeyÄ",
            "Key",
            "F0",
            "F25",
            "Digit",
            "Fn",
            "Unidentified",
        ] {
            assert_eq!(scancode(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn wrong_messages_say_what_is_wrong() {
        for (text, says) in [
            ("{}", "missing field"),
            ("{\"t\":\"jump\"}", "unknown variant"),
            ("{\"t\":\"ack\",\"frame\":-1}", "invalid value"),
            (
                "{\"t\":\"key\",\"code\":\"KeyA\",\"down\":true,\"extra\":1}",
                "unknown field",
            ),
            ("not json", "expected"),
        ] {
            let e = FromBrowser::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let long = format!(
            "{{\"t\":\"clipboard\",\"text\":\"{}\"}}",
            "x".repeat(MAX_MESSAGE)
        );
        assert!(FromBrowser::parse(&long)
            .unwrap_err()
            .contains("longer than"));
        let mut input = Input::default();
        let e = input
            .events(&FromBrowser::Key {
                code: "Fn".into(),
                down: true,
            })
            .unwrap_err();
        assert!(e.contains("no scancode"), "{e}");
        let e = input
            .events(&FromBrowser::Button {
                button: 9,
                down: true,
                x: 0,
                y: 0,
            })
            .unwrap_err();
        assert!(e.contains("no mouse button"), "{e}");
    }

    #[test]
    fn sizes_are_ones_servers_take() {
        assert_eq!(session_size(1127, 637), (1126, 637));
        assert_eq!(session_size(0, 0), (200, 200));
        assert_eq!(session_size(100_000, 100_000), (8192, 8192));
    }

    #[test]
    fn what_is_held_is_released() {
        let mut input = Input::default();
        for message in [
            FromBrowser::Key {
                code: "ControlLeft".into(),
                down: true,
            },
            FromBrowser::Key {
                code: "ArrowLeft".into(),
                down: true,
            },
            FromBrowser::Key {
                code: "ArrowLeft".into(),
                down: false,
            },
            FromBrowser::Button {
                button: 2,
                down: true,
                x: 5,
                y: 6,
            },
        ] {
            input.events(&message).unwrap();
        }
        let released = input.events(&FromBrowser::Release).unwrap();
        assert_eq!(released.len(), 2, "{released:?}");
        assert!(matches!(
            released[0],
            FastPathInputEvent::KeyboardEvent(f, 0x1d) if f == KeyboardFlags::RELEASE
        ));
        assert!(matches!(
            &released[1],
            FastPathInputEvent::MouseEvent(m)
                if m.flags == PointerFlags::RIGHT_BUTTON && (m.x_position, m.y_position) == (5, 6)
        ));
        assert!(input.release().is_empty(), "released once");
    }

    #[test]
    fn text_goes_as_unicode_and_wheel_turns_are_split() {
        let mut input = Input::default();
        let events = input
            .events(&FromBrowser::Text {
                text: "é😀".into()
            })
            .unwrap();
        // é is one UTF-16 unit, the emoji two: each pressed and released.
        assert_eq!(events.len(), 6);
        assert!(matches!(
            events[0],
            FastPathInputEvent::UnicodeKeyboardEvent(f, 0xe9) if f.is_empty()
        ));
        let events = input
            .events(&FromBrowser::Wheel {
                x: 1,
                y: 2,
                delta: -600,
                horizontal: false,
            })
            .unwrap();
        let turns: Vec<i16> = events
            .iter()
            .filter_map(|e| match e {
                FastPathInputEvent::MouseEvent(m)
                    if m.flags.contains(PointerFlags::VERTICAL_WHEEL) =>
                {
                    Some(m.number_of_wheel_rotation_units)
                }
                _ => None,
            })
            .collect();
        assert_eq!(turns, [-255, -255, -90]);
        let cad = input.events(&FromBrowser::Cad).unwrap();
        assert_eq!(cad.len(), 6);
        assert!(
            input.release().is_empty(),
            "Ctrl+Alt+Del leaves nothing held"
        );
    }

    /// What the page does with a frame message: ops applied in order on its canvas.
    fn apply(canvas: &mut [u8], width: u16, message: &[u8]) {
        let stride = usize::from(width) * 4;
        let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        assert_eq!(message[0], 1);
        let mut atlases: Vec<image::RgbImage> = Vec::new();
        let mut at = 5;
        while at < message.len() {
            let op = message[at];
            at += 1;
            match op {
                1 => {
                    let v: Vec<u16> = (0..6).map(|i| u16_at(message, at + i * 2)).collect();
                    at += 12;
                    let before = canvas.to_vec();
                    for y in 0..v[5] {
                        let from = usize::from(v[1] + y) * stride + usize::from(v[0]) * 4;
                        let to = usize::from(v[3] + y) * stride + usize::from(v[2]) * 4;
                        let len = usize::from(v[4]) * 4;
                        canvas[to..to + len].copy_from_slice(&before[from..from + len]);
                    }
                }
                2 => {
                    let (r, g, b) = (message[at], message[at + 1], message[at + 2]);
                    let n = u16_at(message, at + 3);
                    at += 5;
                    for _ in 0..n {
                        let v: Vec<u16> = (0..4).map(|i| u16_at(message, at + i * 2)).collect();
                        at += 8;
                        for y in v[1]..v[1] + v[3] {
                            for x in v[0]..v[0] + v[2] {
                                let p = usize::from(y) * stride + usize::from(x) * 4;
                                canvas[p..p + 3].copy_from_slice(&[b, g, r]);
                            }
                        }
                    }
                }
                3 => {
                    assert_eq!(message[at], 1, "PNG");
                    let len = u32::from_le_bytes(message[at + 1..at + 5].try_into().unwrap());
                    at += 5;
                    atlases.push(
                        image::load_from_memory(&message[at..at + len as usize])
                            .unwrap()
                            .to_rgb8(),
                    );
                    at += len as usize;
                }
                4 => {
                    let v: Vec<u16> = (0..6).map(|i| u16_at(message, at + i * 2)).collect();
                    at += 12;
                    let atlas = &atlases[usize::from(v[0])];
                    for y in 0..v[4] {
                        for x in 0..v[3] {
                            let px = atlas.get_pixel(u32::from(x), u32::from(v[5] + y));
                            let p = usize::from(v[2] + y) * stride + usize::from(v[1] + x) * 4;
                            canvas[p..p + 3].copy_from_slice(&[px[2], px[1], px[0]]);
                        }
                    }
                }
                other => panic!("op {other}"),
            }
        }
    }

    #[test]
    fn frames_rebuild_the_screen_exactly() {
        let (w, h) = (160u16, 120u16);
        let paint = |shift: u16| {
            move |x: u16, y: u16| {
                let sx = x.wrapping_sub(shift);
                if (40..72).contains(&y) && (20..100).contains(&sx) {
                    // A moving block of noise-like content.
                    let v = (u32::from(sx).wrapping_mul(2_654_435_761)
                        ^ u32::from(y).wrapping_mul(40503))
                        >> 7;
                    [v as u8, (v >> 8) as u8, (v >> 16) as u8]
                } else if y < 10 {
                    [0x30, 0x24, 0x1e]
                } else {
                    [0xe8, 0xf1, 0xf4]
                }
            }
        };
        let stats = Stats::default();
        let mut diff = Diff::new();
        let mut canvas = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let kinds = OpKinds {
            copy: true,
            fill: true,
        };
        for (id, shift) in [(1, 0), (2, 8), (3, 16)] {
            let frame = Frame::painted(w, h, paint(shift));
            let ops = diff.ops(&frame, None, kinds);
            let message = encode_frame(id, &frame, &ops, Picture::default(), &stats).unwrap();
            apply(&mut canvas, w, &message);
            for (a, b) in canvas.chunks_exact(4).zip(frame.data.chunks_exact(4)) {
                assert_eq!(a[..3], b[..3], "frame {id}");
            }
        }
        assert!(
            stats.copies.load(Ordering::Relaxed) > 0,
            "the moved block went as a copy"
        );
    }

    #[test]
    fn pieces_share_atlases_until_a_palette_overflows() {
        // Three bands: 200 colours, 100 others (together past 256: a second indexed atlas),
        // then noise (an RGB atlas); each band drawn as two pieces.
        let (w, h) = (64u16, 96u16);
        let frame = Frame::painted(w, h, |x, y| {
            let i = u32::from(y % 32) * 64 + u32::from(x);
            let v = match y / 32 {
                0 => (i % 200) * 0x010203,
                1 => 0x800000 + (i % 100) * 0x000301,
                _ => i.wrapping_mul(2_654_435_761) >> 8,
            };
            [v as u8, (v >> 8) as u8, (v >> 16) as u8]
        });
        let ops: Vec<Op> = (0..6)
            .map(|i| Op::Pixels(Rect::new((i % 2) * 32, (i / 2) * 32, 32, 32)))
            .collect();
        let stats = Stats::default();
        let message = encode_frame(7, &frame, &ops, Picture::default(), &stats).unwrap();
        assert_eq!(stats.images.load(Ordering::Relaxed), 3, "three atlases");
        let mut canvas = vec![0u8; usize::from(w) * usize::from(h) * 4];
        apply(&mut canvas, w, &message);
        for (a, b) in canvas.chunks_exact(4).zip(frame.data.chunks_exact(4)) {
            assert_eq!(a[..3], b[..3]);
        }
        // The RGB-only variant codes the same pixels, without palettes.
        let rgb = encode_frame(7, &frame, &ops, Picture::PngRgbFast, &stats).unwrap();
        let mut canvas = vec![0u8; usize::from(w) * usize::from(h) * 4];
        apply(&mut canvas, w, &rgb);
        for (a, b) in canvas.chunks_exact(4).zip(frame.data.chunks_exact(4)) {
            assert_eq!(a[..3], b[..3]);
        }
    }

    #[test]
    fn acknowledgements_of_frames_never_sent_are_ignored() {
        let acks = Acks::default();
        for id in 1..=3 {
            assert_eq!(acks.next(), id);
            acks.sent(id);
        }
        acks.acknowledge(5);
        assert_eq!(acks.unacknowledged(), 3, "5 was never sent");
        acks.acknowledge(3);
        acks.acknowledge(2);
        assert_eq!(acks.unacknowledged(), 0, "never backwards");
    }
}
