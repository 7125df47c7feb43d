//! An X11 display as a [`Desktop`]: screen capture over the X protocol, input through the
//! XTEST extension.
//!
//! Capture follows the DAMAGE extension where the server has it: the screen is read once in
//! full, then only the rectangles the X server reports as drawn to; a still screen costs one
//! non-blocking event poll per check. Without DAMAGE every check reads the whole screen.
//! Images come through MIT-SHM 1.2 where the server offers it: the X server writes them into a
//! memfd shared with it, read back with `pread` (no copy through the socket, no mapping and so
//! no unsafe code); else through `GetImage` replies.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use x11rb::connection::Connection as _;
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat, ImageOrder};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use super::{keymap, Area, Button, Cursor, Desktop, Frame, Input};

/// How the screen is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Only what the DAMAGE extension reports as drawn (the whole screen without DAMAGE).
    #[default]
    Damage,
    /// The whole screen at every check; sessions compare it tile by tile (for comparison).
    Poll,
}

/// A connection to one X display.
pub struct X11Desktop {
    display: String,
    conn: Mutex<CaptureState>,
    root: xproto::Window,
    /// The screen size, `width << 16 | height` (changed by [`Desktop::resize`]).
    size: AtomicU32,
    /// Where input last put the pointer, `1 << 32 | x << 16 | y` (0: nowhere yet).
    injected: AtomicU64,
    /// Counts the X server's reports that the screen was drawn to (see [`DamageWatch`]).
    drawn: Option<DamageWatch>,
}

/// A thread on a connection of its own that waits for the X server to report drawing on the
/// screen (a DAMAGE object at the non-empty level: one event when drawing starts, re-armed
/// by emptying it) and counts each report on a watch channel, so that sessions read the
/// screen as soon as something was drawn instead of on their next timer tick. Ends when the
/// desktop drops (a message to its window wakes it).
struct DamageWatch {
    drawn: tokio::sync::watch::Sender<u64>,
    conn: Arc<RustConnection>,
    window: xproto::Window,
    stop: xproto::Atom,
}

impl DamageWatch {
    fn start(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connect to X display {display} for damage reports"))?;
        let root = conn.setup().roots[screen_num].root;
        conn.damage_query_version(1, 1)?
            .reply()
            .context("query DAMAGE")?;
        let damage = conn.generate_id()?;
        conn.damage_create(damage, root, damage::ReportLevel::NON_EMPTY)?;
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            xproto::WindowClass::INPUT_ONLY,
            0,
            &xproto::CreateWindowAux::new(),
        )?;
        let stop = conn
            .intern_atom(false, b"DESKPORT_DAMAGE_STOP")?
            .reply()?
            .atom;
        conn.flush()?;
        let conn = Arc::new(conn);
        let drawn = tokio::sync::watch::channel(0u64).0;
        let (thread_conn, thread_drawn) = (conn.clone(), drawn.clone());
        std::thread::Builder::new()
            .name("deskport-damage".into())
            .spawn(move || loop {
                match thread_conn.wait_for_event() {
                    Ok(Event::DamageNotify(_)) => {
                        thread_drawn.send_modify(|n| *n += 1);
                        let emptied = thread_conn
                            .damage_subtract(damage, x11rb::NONE, x11rb::NONE)
                            .and_then(|_| thread_conn.flush());
                        if emptied.is_err() {
                            return;
                        }
                    }
                    Ok(Event::ClientMessage(e)) if e.window == window && e.type_ == stop => {
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            })
            .context("start the damage thread")?;
        Ok(Self {
            drawn,
            conn,
            window,
            stop,
        })
    }
}

impl Drop for DamageWatch {
    fn drop(&mut self) {
        let message = xproto::ClientMessageEvent::new(32, self.window, self.stop, [0u32; 5]);
        let _ = self
            .conn
            .send_event(false, self.window, xproto::EventMask::NO_EVENT, message);
        let _ = self.conn.flush();
    }
}

/// The connection and what capture keeps between checks.
struct CaptureState {
    conn: RustConnection,
    /// The damage object on the root window and a region to fetch its rectangles into.
    damage: Option<(damage::Damage, xfixes::Region)>,
    /// The screen as last read.
    frame: Option<Frame>,
    generation: u64,
    unicode: UnicodeKeys,
    /// The pointer image, re-read after XFIXES reports a change (`None` until first read or
    /// without XFIXES).
    cursor: Option<Cursor>,
    cursor_changed: bool,
    /// The areas read at each of the last generations (DAMAGE mode only).
    history: std::collections::VecDeque<(u64, Vec<Area>)>,
    /// Where the pointer was at the last capture.
    pointer_seen: Option<(u16, u16)>,
    /// The last time a program (not input from a client) moved the pointer: a serial and the
    /// position.
    pointer_moved: Option<(u64, (u16, u16))>,
    /// The shared segment images arrive in (MIT-SHM), if the server offers it.
    shm: Option<Shm>,
}

/// A MIT-SHM segment backed by a memfd: the X server writes images into it, we `pread` them.
struct Shm {
    seg: shm::Seg,
    file: std::fs::File,
    /// Its size in bytes (a whole screen).
    size: usize,
    /// Where one image is read back to before its rows go to their places.
    scratch: Vec<u8>,
}

impl Shm {
    /// A segment for a `width`x`height` screen, attached to the X server (MIT-SHM 1.2).
    fn attach(conn: &RustConnection, (width, height): (u16, u16)) -> anyhow::Result<Self> {
        let version = conn.shm_query_version()?.reply().context("no MIT-SHM")?;
        anyhow::ensure!(
            (version.major_version, version.minor_version) >= (1, 2),
            "MIT-SHM {}.{} cannot take a file descriptor",
            version.major_version,
            version.minor_version
        );
        let size = usize::from(width) * usize::from(height) * 4;
        let fd = nix::sys::memfd::memfd_create(
            c"deskport-screen",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let file = std::fs::File::from(fd);
        file.set_len(size as u64)?;
        let seg = conn.generate_id()?;
        conn.shm_attach_fd(seg, std::os::fd::OwnedFd::from(file.try_clone()?), false)?
            .check()
            .context("attach the MIT-SHM segment")?;
        Ok(Self {
            seg,
            file,
            size,
            scratch: Vec::new(),
        })
    }

    fn detach(self, conn: &RustConnection) {
        let _ = conn.shm_detach(self.seg);
    }
}

/// Generations whose changes are remembered for sessions that fell behind.
const HISTORY: usize = 32;

/// Characters typed without a scancode (RDP Unicode keyboard events) go through keycodes the
/// keymap leaves unused: each character gets one (its keysym on both shift levels, so held
/// modifiers do not change it), reused while it stays among the last few.
#[derive(Debug, Default)]
struct UnicodeKeys {
    spare: Vec<u8>,
    /// (keysym, keycode), most recently assigned last.
    assigned: Vec<(u32, u8)>,
    /// The high half of a surrogate pair waiting for its low half.
    high_surrogate: Option<u16>,
    /// Keycodes pressed per UTF-16 unit, released with it.
    down: Vec<(u16, u8)>,
}

/// Above this many damaged rectangles, one read of their bounding box is cheaper.
const MAX_RECTS: usize = 32;

impl std::fmt::Debug for X11Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X11Desktop({} {}x{})",
            self.display,
            self.size().0,
            self.size().1
        )
    }
}

impl X11Desktop {
    /// Connects to `display` (e.g. `:0`) and checks that it can be captured and driven.
    pub fn connect(display: &str, mode: Capture) -> anyhow::Result<Self> {
        Self::connect_with(display, mode, true)
    }

    /// [`X11Desktop::connect`], with MIT-SHM (`use_shm`) where the server offers it or not.
    pub fn connect_with(display: &str, mode: Capture, use_shm: bool) -> anyhow::Result<Self> {
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
        let x_display = display;
        let damage = match mode {
            Capture::Poll => None,
            Capture::Damage => match track_damage(&conn, root) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, %x_display, "No DAMAGE extension: every screen check reads the whole screen");
                    None
                }
            },
        };
        let shm = if use_shm {
            match Shm::attach(&conn, (width, height)) {
                Ok(shm) => Some(shm),
                Err(e) => {
                    tracing::info!(error = format!("{e:#}"), %x_display, "Screen images through the X socket (no MIT-SHM)");
                    None
                }
            }
        } else {
            None
        };
        // Where the screen is read at damage reports, a thread says when there are some.
        let drawn = match &damage {
            Some(_) => match DamageWatch::start(display) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), %x_display, "No damage reports: the screen is read on a timer");
                    None
                }
            },
            None => None,
        };
        Ok(Self {
            display: display.to_owned(),
            drawn,
            conn: Mutex::new(CaptureState {
                unicode: UnicodeKeys {
                    spare: spare_keycodes(&conn)?,
                    ..UnicodeKeys::default()
                },
                cursor: None,
                cursor_changed: damage.is_some(),
                history: std::collections::VecDeque::new(),
                pointer_seen: None,
                pointer_moved: None,
                shm,
                conn,
                damage,
                frame: None,
                generation: 0,
            }),
            root,
            size: AtomicU32::new(pack(width, height)),
            injected: AtomicU64::new(0),
        })
    }

    /// Whether screen images arrive through MIT-SHM.
    pub fn uses_shm(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shm
            .is_some()
    }

    /// Notes where the pointer is; a change that input did not cause was a program's.
    fn follow_pointer(&self, state: &mut CaptureState) -> anyhow::Result<()> {
        let reply = state.conn.query_pointer(self.root)?.reply()?;
        if !reply.same_screen {
            return Ok(());
        }
        let position = (reply.root_x.max(0) as u16, reply.root_y.max(0) as u16);
        let before = state.pointer_seen.replace(position);
        let injected = self.injected.load(Ordering::SeqCst);
        let by_input = injected != 0 && injected as u32 == pack(position.0, position.1);
        if before.is_some_and(|b| b != position) && !by_input {
            let serial = state.pointer_moved.map_or(1, |(s, _)| s + 1);
            state.pointer_moved = Some((serial, position));
        }
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> anyhow::Result<()> {
        let conn = &self.conn.lock().unwrap_or_else(|e| e.into_inner()).conn;
        conn.xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)?;
        conn.flush()?;
        Ok(())
    }
}

impl X11Desktop {
    /// One RDP Unicode keyboard event (a UTF-16 code unit going down or up).
    fn unicode(&self, unit: u16, down: bool) -> anyhow::Result<()> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let CaptureState { conn, unicode, .. } = &mut *guard;
        if !down {
            if let Some(i) = unicode.down.iter().position(|(u, _)| *u == unit) {
                let (_, keycode) = unicode.down.remove(i);
                conn.xtest_fake_input(
                    xproto::KEY_RELEASE_EVENT,
                    keycode,
                    x11rb::CURRENT_TIME,
                    self.root,
                    0,
                    0,
                    0,
                )?;
                conn.flush()?;
            }
            return Ok(());
        }
        let c = match unit {
            0xd800..=0xdbff => {
                unicode.high_surrogate = Some(unit);
                return Ok(());
            }
            0xdc00..=0xdfff => match unicode.high_surrogate.take() {
                Some(high) => char::decode_utf16([high, unit]).next().and_then(Result::ok),
                None => None,
            },
            _ => char::from_u32(u32::from(unit)),
        };
        let Some(c) = c else {
            tracing::debug!(unit, "An unpaired UTF-16 surrogate ignored");
            return Ok(());
        };
        let keysym = keymap::keysym_of(c);
        let keycode = match unicode.assigned.iter().position(|(k, _)| *k == keysym) {
            Some(i) => {
                let entry = unicode.assigned.remove(i);
                unicode.assigned.push(entry);
                entry.1
            }
            None => {
                // The least recently assigned keycode, or a fresh one.
                let keycode = if unicode.assigned.len() < unicode.spare.len() {
                    unicode.spare[unicode.assigned.len()]
                } else if !unicode.assigned.is_empty() {
                    unicode.assigned.remove(0).1
                } else {
                    tracing::debug!(unit, "No spare keycode for Unicode input");
                    return Ok(());
                };
                conn.change_keyboard_mapping(1, keycode, 2, &[keysym, keysym])?;
                unicode.assigned.push((keysym, keycode));
                keycode
            }
        };
        unicode.down.push((unit, keycode));
        conn.xtest_fake_input(
            xproto::KEY_PRESS_EVENT,
            keycode,
            x11rb::CURRENT_TIME,
            self.root,
            0,
            0,
            0,
        )?;
        conn.flush()?;
        Ok(())
    }
}

impl Desktop for X11Desktop {
    fn size(&self) -> (u16, u16) {
        let size = self.size.load(Ordering::SeqCst);
        ((size >> 16) as u16, size as u16)
    }

    fn resize(&self, width: u16, height: u16) -> anyhow::Result<(u16, u16)> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let current = self.size();
        if current == (width, height) {
            return Ok(current);
        }
        set_screen_size(&state.conn, self.root, current, (width, height)).with_context(|| {
            format!(
                "the X server of {} cannot change its screen size to {width}x{height}",
                self.display
            )
        })?;
        // What the server made of it (it may round).
        let geometry = state.conn.get_geometry(self.root)?.reply()?;
        let size = (geometry.width, geometry.height);
        self.size.store(pack(size.0, size.1), Ordering::SeqCst);
        // A segment for the new size.
        if let Some(old) = state.shm.take() {
            old.detach(&state.conn);
            match Shm::attach(&state.conn, size) {
                Ok(shm) => state.shm = Some(shm),
                Err(e) => tracing::info!(error = format!("{e:#}"), "No MIT-SHM after the resize"),
            }
        }
        // The next capture reads the whole screen at its new size.
        state.frame = None;
        state.history.clear();
        let x_display = &self.display;
        tracing::info!(x_display, width = size.0, height = size.1, "Screen resized");
        Ok(size)
    }

    fn clipboard(&self) -> Option<anyhow::Result<crate::clipboard::Clipboard>> {
        Some(crate::clipboard::Clipboard::start_x(&self.display))
    }

    fn drawn(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.drawn.as_ref().map(|w| w.drawn.subscribe())
    }

    fn changes_since(&self, generation: u64) -> Option<Vec<Area>> {
        let state = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        state.damage?;
        if generation == state.generation {
            return Some(Vec::new());
        }
        // The history must reach back to the generation right after `generation`.
        let oldest = state.history.front()?.0;
        if generation + 1 < oldest || generation > state.generation {
            return None;
        }
        Some(
            state
                .history
                .iter()
                .filter(|(g, _)| *g > generation)
                .flat_map(|(_, areas)| areas.iter().copied())
                .collect(),
        )
    }

    fn pointer_moved(&self) -> Option<(u64, (u16, u16))> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pointer_moved
    }

    fn cursor(&self) -> Option<Cursor> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cursor
            .clone()
    }

    fn capture(&self) -> anyhow::Result<Frame> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let (w, h) = self.size();
        self.follow_pointer(state)?;
        let (Some((damage, region)), Some(frame)) = (state.damage, state.frame.as_ref()) else {
            // The first read (or no DAMAGE): all of the screen. Damage drawn before this read
            // is in the image; clear it so that only later drawing is reported.
            if let Some((damage, _)) = state.damage {
                state
                    .conn
                    .damage_subtract(damage, x11rb::NONE, x11rb::NONE)?;
            }
            let mut data = vec![0u8; usize::from(w) * usize::from(h) * 4];
            read_rect(
                &state.conn,
                state.shm.as_mut(),
                self.root,
                &mut data,
                w,
                (0, 0, w, h),
            )?;
            state.generation += 1;
            let frame = Frame {
                width: w,
                height: h,
                data: Arc::new(data),
                generation: state.generation,
            };
            state.frame = Some(frame.clone());
            state.history.clear();
            state
                .history
                .push_back((state.generation, vec![(0, 0, w, h)]));
            return Ok(frame);
        };
        let mut damaged = false;
        while let Some(event) = state.conn.poll_for_event()? {
            match event {
                Event::DamageNotify(_) => damaged = true,
                Event::XfixesCursorNotify(_) => state.cursor_changed = true,
                _ => {}
            }
        }
        if state.cursor_changed {
            state.cursor_changed = false;
            state.cursor = read_cursor(&state.conn);
        }
        if !damaged {
            return Ok(frame.clone());
        }
        // Take the damage (drawing after this is reported again), then read what it covers.
        state.conn.damage_subtract(damage, x11rb::NONE, region)?;
        let rects = state.conn.xfixes_fetch_region(region)?.reply()?.rectangles;
        let clamp = |r: &xproto::Rectangle| {
            let x0 = r.x.clamp(0, w as i16) as u16;
            let y0 = r.y.clamp(0, h as i16) as u16;
            let x1 = (i32::from(r.x) + i32::from(r.width)).clamp(0, i32::from(w)) as u16;
            let y1 = (i32::from(r.y) + i32::from(r.height)).clamp(0, i32::from(h)) as u16;
            (x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0))
        };
        let mut areas: Vec<Area> = rects
            .iter()
            .map(clamp)
            .filter(|a| a.2 > 0 && a.3 > 0)
            .collect();
        if areas.len() > MAX_RECTS {
            let x0 = areas.iter().map(|a| a.0).min().unwrap_or(0);
            let y0 = areas.iter().map(|a| a.1).min().unwrap_or(0);
            let x1 = areas.iter().map(|a| a.0 + a.2).max().unwrap_or(0);
            let y1 = areas.iter().map(|a| a.1 + a.3).max().unwrap_or(0);
            areas = vec![(x0, y0, x1 - x0, y1 - y0)];
        }
        // Update the kept screen in place (copied only while a session still holds it).
        let mut data = state
            .frame
            .take()
            .map(|f| f.data)
            .context("no screen to update")?;
        let screen = Arc::make_mut(&mut data);
        for &area in &areas {
            read_rect(&state.conn, state.shm.as_mut(), self.root, screen, w, area)?;
        }
        state.generation += 1;
        state.history.push_back((state.generation, areas));
        if state.history.len() > HISTORY {
            state.history.pop_front();
        }
        let frame = Frame {
            width: w,
            height: h,
            data,
            generation: state.generation,
        };
        state.frame = Some(frame.clone());
        Ok(frame)
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
            Input::Unicode { unit, down } => self.unicode(unit, down),
            Input::Move { x, y } => {
                let (width, height) = self.size();
                let (x, y) = (
                    x.min(width.saturating_sub(1)),
                    y.min(height.saturating_sub(1)),
                );
                self.injected
                    .store(1 << 32 | u64::from(pack(x, y)), Ordering::SeqCst);
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

fn pack(width: u16, height: u16) -> u32 {
    u32::from(width) << 16 | u32::from(height)
}

/// Changes the screen of `root` from `current` to `size` through RandR 1.2: a mode of that
/// size (made if the server has none) on the first output's CRTC. The screen must hold the
/// CRTC at every step, so it grows first and shrinks last.
fn set_screen_size(
    conn: &RustConnection,
    root: xproto::Window,
    current: (u16, u16),
    size: (u16, u16),
) -> anyhow::Result<()> {
    let (width, height) = size;
    conn.randr_query_version(1, 2)?
        .reply()
        .context("no RandR 1.2")?;
    let resources = conn.randr_get_screen_resources_current(root)?.reply()?;
    let timestamp = resources.config_timestamp;
    let mut output = None;
    for &id in &resources.outputs {
        let info = conn.randr_get_output_info(id, timestamp)?.reply()?;
        let crtc = if info.crtc != x11rb::NONE {
            info.crtc
        } else {
            match info.crtcs.first() {
                Some(&c) => c,
                None => continue,
            }
        };
        output = Some((id, crtc, info.modes));
        break;
    }
    let (output, crtc, output_modes) = output.context("the screen has no output with a CRTC")?;
    let mode = match resources
        .modes
        .iter()
        .find(|m| m.width == width && m.height == height)
    {
        Some(m) => {
            if !output_modes.contains(&m.id) {
                conn.randr_add_output_mode(output, m.id)?.check()?;
            }
            m.id
        }
        None => {
            let name = format!("{width}x{height}");
            let info = randr::ModeInfo {
                id: 0,
                width,
                height,
                dot_clock: u32::from(width) * u32::from(height) * 60,
                hsync_start: width,
                hsync_end: width,
                htotal: width,
                hskew: 0,
                vsync_start: height,
                vsync_end: height,
                vtotal: height,
                name_len: name.len() as u16,
                mode_flags: randr::ModeFlag::default(),
            };
            let mode = conn
                .randr_create_mode(root, info, name.as_bytes())?
                .reply()
                .context("create a mode")?
                .mode;
            conn.randr_add_output_mode(output, mode)?.check()?;
            mode
        }
    };
    // 96 dots per inch.
    let mm = |px: u16| (u32::from(px) * 254).div_ceil(960);
    let (grow_w, grow_h) = (width.max(current.0), height.max(current.1));
    if (grow_w, grow_h) != current {
        conn.randr_set_screen_size(root, grow_w, grow_h, mm(grow_w), mm(grow_h))?
            .check()
            .context("grow the screen")?;
    }
    let status = conn
        .randr_set_crtc_config(
            crtc,
            x11rb::CURRENT_TIME,
            timestamp,
            0,
            0,
            mode,
            randr::Rotation::ROTATE0,
            &[output],
        )?
        .reply()
        .context("set the mode")?
        .status;
    anyhow::ensure!(
        status == randr::SetConfig::SUCCESS,
        "setting the mode failed: {status:?}"
    );
    if (grow_w, grow_h) != size {
        conn.randr_set_screen_size(root, width, height, mm(width), mm(height))?
            .check()
            .context("shrink the screen")?;
    }
    Ok(())
}

/// Creates a damage object on `root` (reporting when the damaged area becomes non-empty) and
/// a region to fetch the damaged rectangles into.
fn track_damage(
    conn: &RustConnection,
    root: xproto::Window,
) -> anyhow::Result<(damage::Damage, xfixes::Region)> {
    conn.xfixes_query_version(5, 0)?
        .reply()
        .context("query XFIXES")?;
    conn.damage_query_version(1, 1)?
        .reply()
        .context("query DAMAGE")?;
    let damage = conn.generate_id()?;
    conn.damage_create(damage, root, damage::ReportLevel::NON_EMPTY)?;
    let region = conn.generate_id()?;
    conn.xfixes_create_region(region, &[])?;
    conn.xfixes_select_cursor_input(root, xfixes::CursorNotifyMask::DISPLAY_CURSOR)?;
    conn.flush()?;
    Ok((damage, region))
}

/// Reads the area `(x, y, width, height)` of the screen into `screen` (rows of `screen_width`
/// 32-bit pixels).
fn read_rect(
    conn: &RustConnection,
    shm: Option<&mut Shm>,
    root: xproto::Window,
    screen: &mut [u8],
    screen_width: u16,
    (x, y, width, height): (u16, u16, u16, u16),
) -> anyhow::Result<()> {
    let row = usize::from(width) * 4;
    let stride = usize::from(screen_width) * 4;
    let place = |data: &[u8], screen: &mut [u8]| {
        for (i, src) in data.chunks_exact(row).take(usize::from(height)).enumerate() {
            let start = (usize::from(y) + i) * stride + usize::from(x) * 4;
            screen[start..start + row].copy_from_slice(src);
        }
    };
    if let Some(shm) = shm.filter(|s| row * usize::from(height) <= s.size) {
        use std::os::unix::fs::FileExt as _;
        conn.shm_get_image(
            root,
            x as i16,
            y as i16,
            width,
            height,
            !0,
            ImageFormat::Z_PIXMAP.into(),
            shm.seg,
            0,
        )?
        .reply()
        .context("capture the screen (MIT-SHM)")?;
        shm.scratch.resize(row * usize::from(height), 0);
        shm.file
            .read_exact_at(&mut shm.scratch, 0)
            .context("read the MIT-SHM segment")?;
        place(&shm.scratch, screen);
        return Ok(());
    }
    let reply = conn
        .get_image(
            ImageFormat::Z_PIXMAP,
            root,
            x as i16,
            y as i16,
            width,
            height,
            !0,
        )?
        .reply()
        .context("capture the screen")?;
    anyhow::ensure!(
        reply.data.len() >= row * usize::from(height),
        "short screen capture ({} bytes)",
        reply.data.len()
    );
    place(&reply.data, screen);
    Ok(())
}

/// Keycodes of the keymap without any keysym (at most 16, from the top), for Unicode input.
fn spare_keycodes(conn: &RustConnection) -> anyhow::Result<Vec<u8>> {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let mapping = conn
        .get_keyboard_mapping(min, max - min + 1)?
        .reply()
        .context("read the keyboard mapping")?;
    let per = usize::from(mapping.keysyms_per_keycode).max(1);
    let mut spare: Vec<u8> = mapping
        .keysyms
        .chunks(per)
        .enumerate()
        .filter(|(_, syms)| syms.iter().all(|s| *s == 0))
        .map(|(i, _)| min + i as u8)
        .collect();
    spare.reverse();
    spare.truncate(16);
    Ok(spare)
}

/// The pointer's current image (XFIXES GetCursorImage), `None` if it cannot be read.
fn read_cursor(conn: &RustConnection) -> Option<Cursor> {
    let reply = conn.xfixes_get_cursor_image().ok()?.reply().ok()?;
    if reply.width == 0 || reply.height == 0 {
        return None;
    }
    Some(Cursor {
        serial: reply.cursor_serial,
        width: reply.width,
        height: reply.height,
        hotspot: (reply.xhot, reply.yhot),
        argb: Arc::new(reply.cursor_image),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same screen read through MIT-SHM and through `GetImage` replies, in full and after
    /// damage: the same pixels (on a real Xvfb, which offers MIT-SHM 1.2).
    #[test]
    fn shared_memory_and_socket_capture_read_the_same_pixels() {
        let xvfb = deskport_testsupport::Xvfb::start(320, 200);
        xvfb.draw_test_pattern();
        let shm = X11Desktop::connect_with(xvfb.display(), Capture::Damage, true).unwrap();
        let socket = X11Desktop::connect_with(xvfb.display(), Capture::Damage, false).unwrap();
        assert!(shm.uses_shm(), "Xvfb offers MIT-SHM 1.2");
        assert!(!socket.uses_shm());
        let (a, b) = (shm.capture().unwrap(), socket.capture().unwrap());
        assert_eq!((a.width, a.height), (320, 200));
        assert!(a.data == b.data, "full reads differ");
        assert!(a.data.iter().any(|&v| v != 0), "the pattern was read");
        // Something drawn: both read the damaged area the same.
        let animation = xvfb.animate_corner();
        deskport_testsupport::wait_until(
            std::time::Duration::from_secs(10),
            "a damaged area through both paths",
            || {
                let (a2, b2) = (shm.capture().ok()?, socket.capture().ok()?);
                (a2.generation > a.generation && a2.data != a.data).then_some((a2, b2))
            },
        );
        drop(animation);
        // Once the drawing stopped, both end on the same screen.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (a3, b3) = (shm.capture().unwrap(), socket.capture().unwrap());
        assert!(a3.data == b3.data, "damage-limited reads differ");
    }
}
