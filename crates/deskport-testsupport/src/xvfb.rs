use std::process::Command;

use image::RgbImage;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, ImageFormat, ImageOrder};

use crate::ProcessGuard;

/// A private X server (Xvfb) on a free display number; stopped on drop.
///
/// Started by `deskport_desktop::launch`, which takes the display's lock file, so parallel
/// tests and servers in network namespaces never share a number.
#[derive(Debug)]
pub struct Xvfb {
    display: String,
    width: u16,
    height: u16,
    _process: ProcessGuard,
}

impl Xvfb {
    /// Starts Xvfb with one screen of `width`x`height` at 24-bit depth (through
    /// `deskport_desktop::launch`, as deskport's own desktops start).
    pub fn start(width: u16, height: u16) -> Self {
        Self::start_in(width, height, None)
    }

    /// Like [`Xvfb::start`], the server running inside `netns` if given (its clients connect
    /// through its socket in /tmp/.X11-unix from anywhere).
    pub fn start_in(width: u16, height: u16, netns: Option<&crate::Netns>) -> Self {
        crate::require_program("Xvfb");
        let (child, display) = deskport_desktop::launch::start_x_server_with(
            || crate::servers::command_in(netns, "Xvfb"),
            deskport_desktop::launch::XServer::Xvfb,
            (width, height),
            std::path::Path::new("/dev/null"),
            true,
        )
        .expect("start Xvfb");
        Self {
            display,
            width,
            height,
            _process: ProcessGuard::adopt("Xvfb", child),
        }
    }

    /// The display name, e.g. `:12`, for `DISPLAY=`.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The Xvfb process (to read its CPU time).
    pub fn pid(&self) -> u32 {
        self._process.pid()
    }

    /// The screen size this server was started with.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// A screenshot of the whole screen.
    pub fn screenshot(&self) -> RgbImage {
        screenshot(&self.display).expect("take a screenshot")
    }

    /// Paints a test pattern on the root window — four coloured quadrants and a
    /// checkerboard in the middle, so that a copy of the screen is easy to recognise and to
    /// locate — and returns a screenshot of it.
    pub fn draw_test_pattern(&self) -> RgbImage {
        use x11rb::protocol::xproto::CreateGCAux;
        let (conn, screen_num) = x_connect(&self.display).expect("connect to Xvfb");
        let root = conn.setup().roots[screen_num].root;
        let gc = conn.generate_id().expect("an X id");
        conn.create_gc(gc, root, &CreateGCAux::new())
            .expect("create a GC");
        let (w, h) = (self.width as i16, self.height as i16);
        let fill = |color: u32, x: i16, y: i16, width: u16, height: u16| {
            fill_rect(&conn, root, gc, color, (x, y, width, height));
        };
        let (hw, hh) = (self.width / 2, self.height / 2);
        fill(0xd03030, 0, 0, hw, hh);
        fill(0x30a040, w / 2, 0, self.width - hw, hh);
        fill(0x3050d0, 0, h / 2, hw, self.height - hh);
        fill(0xe0c020, w / 2, h / 2, self.width - hw, self.height - hh);
        for i in 0..8i16 {
            for j in 0..8i16 {
                let color = if (i + j) % 2 == 0 { 0xffffff } else { 0x101010 };
                fill(color, w / 2 - 64 + i * 16, h / 2 - 64 + j * 16, 16, 16);
            }
        }
        conn.flush().expect("flush");
        conn.get_input_focus().expect("sync").reply().expect("sync");
        self.screenshot()
    }

    /// Writes `lines` of text (X's `fixed` font, dark on white) from (`x`, `y`), one under the
    /// other, and returns the display's screenshot: text on a flat colour, as desktops show it.
    pub fn draw_text(&self, x: i16, y: i16, lines: &[&str]) -> RgbImage {
        use x11rb::protocol::xproto::{ChangeGCAux, CreateGCAux};
        let (conn, screen_num) = x_connect(&self.display).expect("connect to Xvfb");
        let root = conn.setup().roots[screen_num].root;
        let font = conn.generate_id().expect("an X id");
        conn.open_font(font, b"fixed").expect("the fixed font");
        let gc = conn.generate_id().expect("an X id");
        conn.create_gc(
            gc,
            root,
            &CreateGCAux::new()
                .font(font)
                .foreground(0x202020)
                .background(0xffffff),
        )
        .expect("create a GC");
        let width = lines.iter().map(|l| l.len()).max().unwrap_or(0) as u16 * 6 + 8;
        let height = lines.len() as u16 * 14 + 6;
        fill_rect(&conn, root, gc, 0xffffff, (x, y, width, height));
        conn.change_gc(gc, &ChangeGCAux::new().foreground(0x202020))
            .expect("set colour");
        for (i, line) in lines.iter().enumerate() {
            conn.image_text8(root, gc, x + 4, y + 14 * (i as i16 + 1), line.as_bytes())
                .expect("text");
        }
        conn.get_input_focus().expect("sync").reply().expect("sync");
        self.screenshot()
    }

    /// Keeps an 8x8 square in the bottom-right corner changing colour every 100 ms until the
    /// returned guard drops: FreeRDP's shadow server sends nothing until the screen changes.
    pub fn animate_corner(&self) -> Animation {
        use x11rb::protocol::xproto::{ChangeGCAux, CreateGCAux, Rectangle};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (display, w, h) = (self.display.clone(), self.width, self.height);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (conn, screen_num) = x_connect(&display).expect("connect to Xvfb");
            let root = conn.setup().roots[screen_num].root;
            let gc = conn.generate_id().expect("an X id");
            conn.create_gc(gc, root, &CreateGCAux::new())
                .expect("create a GC");
            let mut on = false;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                on = !on;
                let colour = if on { 0x00ff00 } else { 0xff00ff };
                conn.change_gc(gc, &ChangeGCAux::new().foreground(colour))
                    .expect("set colour");
                let rect = Rectangle {
                    x: w as i16 - 8,
                    y: h as i16 - 8,
                    width: 8,
                    height: 8,
                };
                conn.poly_fill_rectangle(root, gc, &[rect]).expect("fill");
                conn.flush().expect("flush");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Animation {
            stop,
            thread: Some(thread),
        }
    }

    /// The benchmarks' workload: a 320x240 picture (smooth gradients crossed by a fine
    /// pattern, different in every frame) that moves across the screen at `fps` frames per
    /// second, drawn with PutImage, until the returned guard drops. Deterministic: frame `n`
    /// always looks the same, so two servers see the same work.
    pub fn animate_workload(&self, fps: u32) -> Animation {
        use x11rb::protocol::xproto::CreateGCAux;
        const W: u16 = 320;
        const H: u16 = 240;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (display, sw, sh) = (self.display.clone(), self.width, self.height);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (conn, screen_num) = x_connect(&display).expect("connect to Xvfb");
            let screen = &conn.setup().roots[screen_num];
            let (root, depth) = (screen.root, screen.root_depth);
            let gc = conn.generate_id().expect("an X id");
            conn.create_gc(gc, root, &CreateGCAux::new())
                .expect("create a GC");
            let period = std::time::Duration::from_secs(1) / fps.max(1);
            let mut next = std::time::Instant::now();
            let mut data = vec![0u8; usize::from(W) * usize::from(H) * 4];
            for frame in 0u32.. {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for (i, px) in data.chunks_exact_mut(4).enumerate() {
                    let (x, y) = ((i % usize::from(W)) as u32, (i / usize::from(W)) as u32);
                    let t = frame.wrapping_mul(7);
                    px[0] = (x + t) as u8; // blue: a gradient that scrolls
                    px[1] = (y * 2 + t / 2) as u8; // green: a slower gradient
                    px[2] = if (x / 8 + y / 8 + frame) % 2 == 0 {
                        0xe0
                    } else {
                        0x20
                    }; // red: checks
                    px[3] = 0;
                }
                let x = ((frame * 6) % u32::from(sw - W)) as i16;
                let y = ((frame * 4) % u32::from(sh - H)) as i16;
                conn.put_image(ImageFormat::Z_PIXMAP, root, gc, W, H, x, y, 0, depth, &data)
                    .expect("draw a frame");
                conn.get_input_focus().expect("sync").reply().expect("sync");
                next += period;
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Animation {
            stop,
            thread: Some(thread),
        }
    }

    /// Opens a window covering the whole screen that records the key presses and button
    /// presses it receives (the server side of an input test).
    pub fn input_probe(&self) -> InputProbe {
        InputProbe::open(&self.display, self.width, self.height)
    }

    /// A `Command` for `program` with `DISPLAY` set to this server.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("DISPLAY", &self.display);
        command
    }
}

/// Fills `(x, y, width, height)` of `root` with `color` through `gc` (its foreground changes).
fn fill_rect(
    conn: &impl Connection,
    root: x11rb::protocol::xproto::Window,
    gc: x11rb::protocol::xproto::Gcontext,
    color: u32,
    (x, y, width, height): (i16, i16, u16, u16),
) {
    use x11rb::protocol::xproto::{ChangeGCAux, ConnectionExt as _, Rectangle};
    conn.change_gc(gc, &ChangeGCAux::new().foreground(color))
        .expect("set colour");
    let rect = Rectangle {
        x,
        y,
        width,
        height,
    };
    conn.poly_fill_rectangle(root, gc, &[rect]).expect("fill");
}

/// A screenshot of the root window of X display `display` (e.g. `:0`), read over the X
/// protocol (GetImage), so it needs no external tools.
///
/// Supports the 24/32-bit TrueColor layouts that Xvfb and real servers use.
pub fn screenshot(display: &str) -> anyhow::Result<RgbImage> {
    let (conn, screen_num) = x_connect(display)?;
    let setup = conn.setup();
    let screen = &setup.roots[screen_num];
    let (width, height) = (screen.width_in_pixels, screen.height_in_pixels);
    let reply = conn
        .get_image(ImageFormat::Z_PIXMAP, screen.root, 0, 0, width, height, !0)?
        .reply()?;
    let format = setup
        .pixmap_formats
        .iter()
        .find(|f| f.depth == reply.depth)
        .ok_or_else(|| anyhow::anyhow!("no pixmap format for depth {}", reply.depth))?;
    anyhow::ensure!(
        format.bits_per_pixel == 32 && setup.image_byte_order == ImageOrder::LSB_FIRST,
        "unsupported pixmap layout: {} bits per pixel, {:?}",
        format.bits_per_pixel,
        setup.image_byte_order
    );
    let stride = usize::from(width) * 4;
    let mut image = RgbImage::new(u32::from(width), u32::from(height));
    for (y, row) in reply.data.chunks_exact(stride).enumerate() {
        for (x, px) in row.chunks_exact(4).enumerate() {
            // LSB-first 0x00RRGGBB: bytes B, G, R, X.
            image.put_pixel(x as u32, y as u32, image::Rgb([px[2], px[1], px[0]]));
        }
    }
    Ok(image)
}

/// See [`Xvfb::animate_corner`].
#[derive(Debug)]
pub struct Animation {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Animation {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an [`InputProbe`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEvent {
    /// An X keycode went down.
    Key(u8),
    /// A mouse button went down at a position in the probe window (= on the screen).
    Button(u8, i16, i16),
}

/// See [`Xvfb::input_probe`].
#[derive(Debug)]
pub struct InputProbe {
    events: std::sync::Arc<std::sync::Mutex<Vec<ProbeEvent>>>,
}

impl InputProbe {
    fn open(display: &str, width: u16, height: u16) -> Self {
        use x11rb::protocol::xproto::{CreateWindowAux, EventMask, InputFocus, WindowClass};
        use x11rb::protocol::Event;
        let (conn, screen_num) = x_connect(display).expect("connect to Xvfb");
        let screen = conn.setup().roots[screen_num].clone();
        let window = conn.generate_id().expect("an X id");
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            width,
            height,
            0,
            WindowClass::INPUT_OUTPUT,
            screen.root_visual,
            &CreateWindowAux::new()
                .background_pixel(0x202020)
                .override_redirect(1)
                .event_mask(EventMask::KEY_PRESS | EventMask::BUTTON_PRESS),
        )
        .expect("create the probe window");
        conn.map_window(window).expect("map the probe window");
        conn.set_input_focus(InputFocus::POINTER_ROOT, window, x11rb::CURRENT_TIME)
            .expect("focus the probe window");
        conn.get_input_focus().expect("sync").reply().expect("sync");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        std::thread::spawn(move || {
            while let Ok(event) = conn.wait_for_event() {
                let probe = match event {
                    Event::KeyPress(e) => ProbeEvent::Key(e.detail),
                    Event::ButtonPress(e) => ProbeEvent::Button(e.detail, e.event_x, e.event_y),
                    _ => continue,
                };
                seen.lock().unwrap().push(probe);
            }
        });
        Self { events }
    }

    /// Everything seen so far.
    pub fn events(&self) -> Vec<ProbeEvent> {
        self.events.lock().unwrap().clone()
    }
}

/// A pointer image: size, hotspot and premultiplied ARGB pixels.
pub type CursorImage = ((u16, u16), (u16, u16), Vec<u32>);

/// The pointer image `display` shows now (XFIXES).
pub fn cursor_image(display: &str) -> anyhow::Result<CursorImage> {
    use x11rb::protocol::xfixes::ConnectionExt as _;
    let (conn, _) = x_connect(display)?;
    conn.xfixes_query_version(5, 0)?.reply()?;
    let reply = conn.xfixes_get_cursor_image()?.reply()?;
    Ok((
        (reply.width, reply.height),
        (reply.xhot, reply.yhot),
        reply.cursor_image,
    ))
}

/// Connects to the X `display`: a local display (`:N` or `:N.S`) through its socket file
/// `/tmp/.X11-unix/XN` where there is one, else as x11rb does (the abstract socket first).
/// Abstract sockets belong to a network namespace: a process outside the namespace an X server
/// runs in (the heavy benchmark's shaped link, the hosts of the multi-host test) would reach
/// whatever server of that number its own namespace has. Socket files are shared by all
/// namespaces, and `deskport_desktop::launch` takes each display's lock file, so a socket
/// file names one server. The cookie comes from the X authority file as x11rb reads it.
pub fn x_connect(display: &str) -> anyhow::Result<(x11rb::rust_connection::RustConnection, usize)> {
    use x11rb::rust_connection::{DefaultStream, RustConnection};
    let local = display.strip_prefix(':').and_then(|rest| {
        let (number, screen) = rest.split_once('.').unwrap_or((rest, "0"));
        Some((number.parse::<u32>().ok()?, screen.parse::<usize>().ok()?))
    });
    let Some((number, screen)) =
        local.filter(|(number, _)| deskport_desktop::launch::x_socket(*number).exists())
    else {
        return Ok(x11rb::connect(Some(display))?);
    };
    let stream =
        std::os::unix::net::UnixStream::connect(deskport_desktop::launch::x_socket(number))
            .map_err(|e| anyhow::anyhow!("connect to X display {display}: {e}"))?;
    // With the display's cookie where it has one (Xvnc, xrdp's sessions), as x11rb does: no
    // authority file, or none for this display, means no cookie.
    let (stream, (family, address)) = DefaultStream::from_unix_stream(stream)?;
    let display_number = u16::try_from(number)?;
    let (name, data) = x11rb_protocol::xauth::get_auth(family, &address, display_number)
        .ok()
        .flatten()
        .unwrap_or_default();
    let connection = RustConnection::connect_to_stream_with_auth_info(stream, screen, name, data)?;
    Ok((connection, screen))
}
