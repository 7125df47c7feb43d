//! The desktop in an X11 window (on Wayland through XWayland): pixels go up with `PutImage`,
//! keys go to the server as scancodes (X keycode → PC/AT set 1, the inverse of the table the
//! server uses to inject them), the mouse and its wheels as pointer events.
//!
//! X11 directly rather than winit + softbuffer: the protocol gives us the keyboard's keycodes,
//! which map one-to-one onto RDP scancodes with the server's own table, and x11rb is already
//! part of the build; the window is tested under Xvfb like the server.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::MousePdu;
use ironrdp_session::image::DecodedImage;
use tokio::sync::mpsc;
use x11rb::connection::{Connection as _, RequestConnection as _};
use x11rb::protocol::render::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat, ImageOrder};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::session::{Frontend, PointerShape, UiEvent};

/// One wheel notch, in the units RDP uses.
const WHEEL_NOTCH: i16 = 120;

/// A window showing the remote desktop.
pub struct Window {
    conn: Arc<RustConnection>,
    window: xproto::Window,
    gc: xproto::Gcontext,
    depth: u8,
    size: (u16, u16),
    max_request_bytes: usize,
    /// The window has the keyboard focus (the server may then move the pointer in it).
    focused: Arc<std::sync::atomic::AtomicBool>,
    /// The X cursor showing the server's pointer, if one was made.
    cursor: Option<xproto::Cursor>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Window({}x{})", self.size.0, self.size.1)
    }
}

/// The size of the X display's screen, for `-f` without `-g`.
pub fn screen_size(display: Option<&str>) -> anyhow::Result<(u16, u16)> {
    let (conn, screen_num) = x11rb::connect(display).context("connect to the X display")?;
    let screen = &conn.setup().roots[screen_num];
    Ok((screen.width_in_pixels, screen.height_in_pixels))
}

fn atom(conn: &RustConnection, name: &str) -> anyhow::Result<xproto::Atom> {
    Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
}

impl Window {
    /// Opens a `width`×`height` window titled `title` on `$DISPLAY` (or `display`); the returned
    /// receiver carries the user's input and the window's repaint requests.
    pub fn open(
        display: Option<&str>,
        title: &str,
        width: u16,
        height: u16,
        fullscreen: bool,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<UiEvent>)> {
        let (conn, screen_num) = x11rb::connect(display).context(
            "cannot open a window: no X display (is $DISPLAY set? use --screenshot FILE.png without a display)",
        )?;
        let setup = conn.setup();
        let screen = setup.roots[screen_num].clone();
        let format = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == screen.root_depth)
            .context("the X display has no pixmap format for its root depth")?;
        anyhow::ensure!(
            screen.root_depth == 24 && format.bits_per_pixel == 32 && setup.image_byte_order == ImageOrder::LSB_FIRST,
            "the X display has depth {} with {} bits per pixel; deskport's window needs 24-bit TrueColor",
            screen.root_depth,
            format.bits_per_pixel
        );
        let window = conn.generate_id()?;
        let gc = conn.generate_id()?;
        let events = xproto::EventMask::EXPOSURE
            | xproto::EventMask::KEY_PRESS
            | xproto::EventMask::KEY_RELEASE
            | xproto::EventMask::BUTTON_PRESS
            | xproto::EventMask::BUTTON_RELEASE
            | xproto::EventMask::POINTER_MOTION
            | xproto::EventMask::FOCUS_CHANGE
            | xproto::EventMask::STRUCTURE_NOTIFY;
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            width,
            height,
            0,
            xproto::WindowClass::INPUT_OUTPUT,
            screen.root_visual,
            &xproto::CreateWindowAux::new()
                .background_pixel(screen.black_pixel)
                .event_mask(events),
        )?;
        conn.create_gc(
            gc,
            window,
            &xproto::CreateGCAux::new().graphics_exposures(0),
        )?;

        let wm_protocols = atom(&conn, "WM_PROTOCOLS")?;
        let wm_delete = atom(&conn, "WM_DELETE_WINDOW")?;
        let utf8 = atom(&conn, "UTF8_STRING")?;
        let net_wm_name = atom(&conn, "_NET_WM_NAME")?;
        conn.change_property32(
            xproto::PropMode::REPLACE,
            window,
            wm_protocols,
            xproto::AtomEnum::ATOM,
            &[wm_delete],
        )?;
        conn.change_property8(
            xproto::PropMode::REPLACE,
            window,
            xproto::AtomEnum::WM_NAME,
            xproto::AtomEnum::STRING,
            title.as_bytes(),
        )?;
        conn.change_property8(
            xproto::PropMode::REPLACE,
            window,
            net_wm_name,
            utf8,
            title.as_bytes(),
        )?;
        conn.change_property8(
            xproto::PropMode::REPLACE,
            window,
            xproto::AtomEnum::WM_CLASS,
            xproto::AtomEnum::STRING,
            b"deskport\0deskport\0",
        )?;
        // The desktop has a fixed size until the server offers display control: say so to
        // the window manager.
        if !fullscreen {
            set_size_hints(&conn, window, (width, height), (width, height))?;
        } else {
            let state = atom(&conn, "_NET_WM_STATE")?;
            let full = atom(&conn, "_NET_WM_STATE_FULLSCREEN")?;
            conn.change_property32(
                xproto::PropMode::REPLACE,
                window,
                state,
                xproto::AtomEnum::ATOM,
                &[full],
            )?;
        }
        conn.map_window(window)?;
        conn.flush()?;

        let conn = Arc::new(conn);
        let max_request_bytes = conn.maximum_request_bytes();
        let (tx, rx) = mpsc::unbounded_channel();
        let focused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = EventReader {
            conn: conn.clone(),
            window,
            wm_protocols,
            wm_delete,
            size: (width, height),
            pressed: BTreeSet::new(),
            unicode_down: std::collections::BTreeMap::new(),
            buttons: PointerFlags::empty(),
            last: (0, 0),
            focused: focused.clone(),
            tx,
        };
        std::thread::Builder::new()
            .name("deskport-window".into())
            .spawn(move || reader.run())
            .context("start the window's event thread")?;
        Ok((
            Self {
                conn,
                window,
                gc,
                depth: screen.root_depth,
                size: (width, height),
                max_request_bytes,
                focused,
                cursor: None,
            },
            rx,
        ))
    }

    /// An X cursor (RENDER) from `rgba` pixels with straight alpha.
    fn make_cursor(
        &self,
        width: u16,
        height: u16,
        hotspot: (u16, u16),
        rgba: &[u8],
    ) -> anyhow::Result<xproto::Cursor> {
        anyhow::ensure!(
            width > 0 && height > 0 && rgba.len() >= usize::from(width) * usize::from(height) * 4,
            "a {width}x{height} pointer with {} bytes",
            rgba.len()
        );
        let formats = self.conn.render_query_pict_formats()?.reply()?;
        let format = formats
            .formats
            .iter()
            .find(|f| {
                f.type_ == render::PictType::DIRECT
                    && f.depth == 32
                    && f.direct.alpha_mask == 0xff
                    && f.direct.alpha_shift == 24
                    && f.direct.red_shift == 16
                    && f.direct.green_shift == 8
                    && f.direct.blue_shift == 0
            })
            .context("the X server has no ARGB32 picture format")?
            .id;
        // ARGB32 wants premultiplied 0xAARRGGBB words (little-endian: B, G, R, A).
        let mut argb = Vec::with_capacity(usize::from(width) * usize::from(height) * 4);
        for px in rgba
            .chunks_exact(4)
            .take(usize::from(width) * usize::from(height))
        {
            let a = u16::from(px[3]);
            let pre = |c: u8| ((u16::from(c) * a + 127) / 255) as u8;
            argb.extend_from_slice(&[pre(px[2]), pre(px[1]), pre(px[0]), px[3]]);
        }
        let pixmap = self.conn.generate_id()?;
        self.conn
            .create_pixmap(32, pixmap, self.window, width, height)?;
        let gc = self.conn.generate_id()?;
        self.conn
            .create_gc(gc, pixmap, &xproto::CreateGCAux::new())?;
        self.conn.put_image(
            ImageFormat::Z_PIXMAP,
            pixmap,
            gc,
            width,
            height,
            0,
            0,
            0,
            32,
            &argb,
        )?;
        let picture = self.conn.generate_id()?;
        self.conn.render_create_picture(
            picture,
            pixmap,
            format,
            &render::CreatePictureAux::new(),
        )?;
        let cursor = self.conn.generate_id()?;
        self.conn.render_create_cursor(
            cursor,
            picture,
            hotspot.0.min(width - 1),
            hotspot.1.min(height - 1),
        )?;
        self.conn.render_free_picture(picture)?;
        self.conn.free_gc(gc)?;
        self.conn.free_pixmap(pixmap)?;
        Ok(cursor)
    }

    /// The X window id (tests drive it with xdotool).
    pub fn id(&self) -> u32 {
        self.window
    }

    fn put(&self, image: &DecodedImage, region: &InclusiveRectangle) -> anyhow::Result<()> {
        let (iw, ih) = (image.width(), image.height());
        if iw == 0 || ih == 0 || region.left >= iw || region.top >= ih {
            return Ok(());
        }
        let right = region.right.min(iw - 1);
        let bottom = region.bottom.min(ih - 1);
        let width = usize::from(right - region.left) + 1;
        let stride = image.stride();
        let row_bytes = width * 4;
        let rows_per_request = ((self.max_request_bytes.saturating_sub(64)) / row_bytes).max(1);
        let data = image.data();
        let mut top = usize::from(region.top);
        let mut buf =
            Vec::with_capacity(row_bytes * rows_per_request.min(usize::from(bottom) + 1 - top));
        while top <= usize::from(bottom) {
            let rows = rows_per_request.min(usize::from(bottom) + 1 - top);
            buf.clear();
            for y in top..top + rows {
                let start = y * stride + usize::from(region.left) * 4;
                buf.extend_from_slice(&data[start..start + row_bytes]);
            }
            self.conn.put_image(
                ImageFormat::Z_PIXMAP,
                self.window,
                self.gc,
                width as u16,
                rows as u16,
                region.left as i16,
                top as i16,
                0,
                self.depth,
                &buf,
            )?;
            top += rows;
        }
        self.conn.flush()?;
        Ok(())
    }
}

impl Frontend for Window {
    const PIXEL_FORMAT: PixelFormat = PixelFormat::BgrX32;

    fn update(
        &mut self,
        image: &DecodedImage,
        region: &InclusiveRectangle,
    ) -> anyhow::Result<bool> {
        self.put(image, region).context("draw in the window")?;
        Ok(false)
    }

    fn pointer_shape(&mut self, shape: PointerShape) -> anyhow::Result<()> {
        let cursor = match shape {
            PointerShape::Default => x11rb::NONE,
            PointerShape::Hidden => self.make_cursor(1, 1, (0, 0), &[0, 0, 0, 0])?,
            PointerShape::Bitmap(p) => self.make_cursor(
                p.width,
                p.height,
                (p.hotspot_x, p.hotspot_y),
                &p.bitmap_data,
            )?,
        };
        self.conn.change_window_attributes(
            self.window,
            &xproto::ChangeWindowAttributesAux::new().cursor(cursor),
        )?;
        if let Some(old) =
            std::mem::replace(&mut self.cursor, (cursor != x11rb::NONE).then_some(cursor))
        {
            self.conn.free_cursor(old)?;
        }
        self.conn.flush()?;
        Ok(())
    }

    fn pointer_position(&mut self, x: u16, y: u16) -> anyhow::Result<()> {
        // Only while the user works in this window (as xfreerdp does).
        if !self.focused.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.conn.warp_pointer(
            x11rb::NONE,
            self.window,
            0,
            0,
            0,
            0,
            x.min(i16::MAX as u16) as i16,
            y.min(i16::MAX as u16) as i16,
        )?;
        self.conn.flush()?;
        Ok(())
    }

    fn resizable(&mut self) -> anyhow::Result<()> {
        // What MS-RDPEDISP allows a monitor to be.
        set_size_hints(&self.conn, self.window, (200, 200), (8192, 8192))?;
        self.conn.flush()?;
        Ok(())
    }

    fn resized(&mut self, image: &DecodedImage) -> anyhow::Result<()> {
        let size = (image.width(), image.height());
        if size != self.size {
            self.size = size;
            self.conn.configure_window(
                self.window,
                &xproto::ConfigureWindowAux::new()
                    .width(u32::from(size.0))
                    .height(u32::from(size.1)),
            )?;
            self.conn.flush()?;
        }
        Ok(())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.window);
        let _ = self.conn.flush();
    }
}

/// Tells the window manager the sizes the window may take (WM_NORMAL_HINTS: PMinSize and
/// PMaxSize).
fn set_size_hints(
    conn: &RustConnection,
    window: xproto::Window,
    min: (u16, u16),
    max: (u16, u16),
) -> anyhow::Result<()> {
    let mut hints = [0u32; 18];
    hints[0] = 0x10 | 0x20;
    hints[5] = u32::from(min.0);
    hints[6] = u32::from(min.1);
    hints[7] = u32::from(max.0);
    hints[8] = u32::from(max.1);
    conn.change_property32(
        xproto::PropMode::REPLACE,
        window,
        xproto::AtomEnum::WM_NORMAL_HINTS,
        xproto::AtomEnum::WM_SIZE_HINTS,
        &hints,
    )?;
    Ok(())
}

/// Reads the window's X events on its own thread and turns them into [`UiEvent`]s.
struct EventReader {
    conn: Arc<RustConnection>,
    window: xproto::Window,
    wm_protocols: xproto::Atom,
    wm_delete: xproto::Atom,
    size: (u16, u16),
    /// Keys (X keycodes) held down, released when the window loses the focus so that none
    /// stays stuck on the server.
    pressed: BTreeSet<u8>,
    /// Keys sent as characters (UTF-16 units), by X keycode, until released.
    unicode_down: std::collections::BTreeMap<u8, Vec<u16>>,
    buttons: PointerFlags,
    /// Where the pointer last was, in desktop coordinates.
    last: (u16, u16),
    focused: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::UnboundedSender<UiEvent>,
}

impl EventReader {
    fn run(mut self) {
        loop {
            let event = match self.conn.wait_for_event() {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "The X connection ended");
                    let _ = self.tx.send(UiEvent::Close);
                    return;
                }
            };
            let Some(ui) = self.translate(event) else {
                continue;
            };
            let close = matches!(ui, UiEvent::Close);
            if self.tx.send(ui).is_err() || close {
                return;
            }
        }
    }

    fn position(&self, x: i16, y: i16) -> (u16, u16) {
        let clamp = |v: i16, max: u16| {
            u16::try_from(v.max(0))
                .unwrap_or(0)
                .min(max.saturating_sub(1))
        };
        (clamp(x, self.size.0), clamp(y, self.size.1))
    }

    fn key(&mut self, keycode: u8, down: bool, state: xproto::KeyButMask) -> Option<UiEvent> {
        let Some((code, extended)) = deskport_desktop::keymap::scancode(keycode) else {
            return self.unicode_key(keycode, down, state);
        };
        if down {
            self.pressed.insert(keycode);
        } else if !self.pressed.remove(&keycode) {
            // A release without a press (the key went down before the window had the focus).
            return None;
        }
        let mut flags = KeyboardFlags::empty();
        if !down {
            flags |= KeyboardFlags::RELEASE;
        }
        if extended {
            flags |= KeyboardFlags::EXTENDED;
        }
        Some(UiEvent::Input(vec![FastPathInputEvent::KeyboardEvent(
            flags, code,
        )]))
    }

    /// A key without a scancode (a keycode the local keymap gives a character that no PC key
    /// has, as input methods and `xdotool type` do): sent as the character, with RDP Unicode
    /// keyboard events.
    fn unicode_key(
        &mut self,
        keycode: u8,
        down: bool,
        state: xproto::KeyButMask,
    ) -> Option<UiEvent> {
        let units: Vec<u16> = if down {
            let mapping = self
                .conn
                .get_keyboard_mapping(keycode, 1)
                .ok()?
                .reply()
                .ok()?;
            let shifted = state.contains(xproto::KeyButMask::SHIFT);
            let level = usize::from(shifted);
            let keysym = match mapping.keysyms.get(level) {
                Some(&k) if k != 0 => k,
                _ => *mapping.keysyms.first()?,
            };
            let Some(c) = deskport_desktop::keymap::char_of(keysym) else {
                tracing::debug!(keycode, keysym, "No scancode or character for this key");
                return None;
            };
            let units: Vec<u16> = c.encode_utf16(&mut [0; 2]).to_vec();
            self.unicode_down.insert(keycode, units.clone());
            units
        } else {
            self.unicode_down.remove(&keycode)?
        };
        let flags = if down {
            KeyboardFlags::empty()
        } else {
            KeyboardFlags::RELEASE
        };
        Some(UiEvent::Input(
            units
                .into_iter()
                .map(|u| FastPathInputEvent::UnicodeKeyboardEvent(flags, u))
                .collect(),
        ))
    }

    fn mouse(&mut self, flags: PointerFlags, wheel: i16, x: i16, y: i16) -> UiEvent {
        let (x, y) = self.position(x, y);
        self.last = (x, y);
        UiEvent::Input(vec![FastPathInputEvent::MouseEvent(MousePdu {
            flags,
            number_of_wheel_rotation_units: wheel,
            x_position: x,
            y_position: y,
        })])
    }

    fn button(&mut self, button: u8, down: bool, x: i16, y: i16) -> Option<UiEvent> {
        let wheel = |flags: PointerFlags, units: i16| Some((flags, units));
        let (flags, units) = match button {
            1 => (PointerFlags::LEFT_BUTTON, 0),
            2 => (PointerFlags::MIDDLE_BUTTON_OR_WHEEL, 0),
            3 => (PointerFlags::RIGHT_BUTTON, 0),
            // Wheels: X reports each notch as a press and a release; send the press.
            4..=7 if !down => return None,
            4 => wheel(PointerFlags::VERTICAL_WHEEL, WHEEL_NOTCH)?,
            5 => wheel(PointerFlags::VERTICAL_WHEEL, -WHEEL_NOTCH)?,
            6 => wheel(PointerFlags::HORIZONTAL_WHEEL, -WHEEL_NOTCH)?,
            7 => wheel(PointerFlags::HORIZONTAL_WHEEL, WHEEL_NOTCH)?,
            _ => return None,
        };
        if units != 0 {
            return Some(self.mouse(flags, units, x, y));
        }
        if down {
            self.buttons |= flags;
            Some(self.mouse(flags | PointerFlags::DOWN, 0, x, y))
        } else {
            self.buttons -= flags;
            Some(self.mouse(flags, 0, x, y))
        }
    }

    fn translate(&mut self, event: Event) -> Option<UiEvent> {
        match event {
            Event::KeyPress(e) if e.event == self.window => self.key(e.detail, true, e.state),
            Event::KeyRelease(e) if e.event == self.window => self.key(e.detail, false, e.state),
            Event::ButtonPress(e) if e.event == self.window => {
                self.button(e.detail, true, e.event_x, e.event_y)
            }
            Event::ButtonRelease(e) if e.event == self.window => {
                self.button(e.detail, false, e.event_x, e.event_y)
            }
            Event::MotionNotify(e) if e.event == self.window => {
                Some(self.mouse(PointerFlags::MOVE, 0, e.event_x, e.event_y))
            }
            Event::FocusIn(e) if e.event == self.window => {
                self.focused
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                None
            }
            Event::FocusOut(_) => {
                self.focused
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                let mut events: Vec<FastPathInputEvent> = std::mem::take(&mut self.pressed)
                    .into_iter()
                    .filter_map(deskport_desktop::keymap::scancode)
                    .map(|(code, extended)| {
                        let mut flags = KeyboardFlags::RELEASE;
                        if extended {
                            flags |= KeyboardFlags::EXTENDED;
                        }
                        FastPathInputEvent::KeyboardEvent(flags, code)
                    })
                    .collect();
                events.extend(
                    std::mem::take(&mut self.unicode_down)
                        .into_values()
                        .flatten()
                        .map(|u| {
                            FastPathInputEvent::UnicodeKeyboardEvent(KeyboardFlags::RELEASE, u)
                        }),
                );
                for button in [
                    PointerFlags::LEFT_BUTTON,
                    PointerFlags::MIDDLE_BUTTON_OR_WHEEL,
                    PointerFlags::RIGHT_BUTTON,
                ] {
                    if self.buttons.contains(button) {
                        events.push(FastPathInputEvent::MouseEvent(MousePdu {
                            flags: button,
                            number_of_wheel_rotation_units: 0,
                            x_position: self.last.0,
                            y_position: self.last.1,
                        }));
                    }
                }
                self.buttons = PointerFlags::empty();
                (!events.is_empty()).then_some(UiEvent::Input(events))
            }
            Event::Expose(e) if e.window == self.window && e.width > 0 && e.height > 0 => {
                Some(UiEvent::Repaint(InclusiveRectangle {
                    left: e.x,
                    top: e.y,
                    right: e.x.saturating_add(e.width - 1),
                    bottom: e.y.saturating_add(e.height - 1),
                }))
            }
            Event::ClientMessage(e)
                if e.window == self.window
                    && e.type_ == self.wm_protocols
                    && e.format == 32
                    && e.data.as_data32()[0] == self.wm_delete =>
            {
                Some(UiEvent::Close)
            }
            Event::DestroyNotify(e) if e.window == self.window => Some(UiEvent::Close),
            Event::ConfigureNotify(e)
                if e.window == self.window && (e.width, e.height) != self.size =>
            {
                self.size = (e.width, e.height);
                Some(UiEvent::Resized(e.width, e.height))
            }
            Event::Error(e) => {
                tracing::warn!(error = ?e, "X error");
                None
            }
            _ => None,
        }
    }
}
