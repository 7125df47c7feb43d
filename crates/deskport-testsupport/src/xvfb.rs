use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use image::RgbImage;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, ImageFormat, ImageOrder};

use crate::ProcessGuard;

/// A private X server (Xvfb) on a display number it picked itself; stopped on drop.
///
/// Xvfb is started with `-displayfd`, so it chooses a free display number and reports it once
/// it accepts connections: no polling of sockets, no collisions between parallel tests.
#[derive(Debug)]
pub struct Xvfb {
    display: String,
    width: u16,
    height: u16,
    _process: ProcessGuard,
}

impl Xvfb {
    /// Starts Xvfb with one screen of `width`x`height` at 24-bit depth.
    pub fn start(width: u16, height: u16) -> Self {
        crate::require_program("Xvfb");
        let mut process = ProcessGuard::spawn(
            "Xvfb",
            Command::new("Xvfb")
                .args([
                    "-displayfd",
                    "1",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                    "-screen",
                    "0",
                ])
                .arg(format!("{width}x{height}x24"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("start Xvfb");
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .expect("Xvfb's stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the display number Xvfb reports");
        let number: u32 = line.trim().parse().unwrap_or_else(|_| {
            panic!("Xvfb reported no display number (got {line:?}); did it fail to start?")
        });
        Self {
            display: format!(":{number}"),
            width,
            height,
            _process: process,
        }
    }

    /// The display name, e.g. `:12`, for `DISPLAY=`.
    pub fn display(&self) -> &str {
        &self.display
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
        use x11rb::protocol::xproto::{ChangeGCAux, CreateGCAux, Rectangle};
        let (conn, screen_num) = x11rb::connect(Some(&self.display)).expect("connect to Xvfb");
        let root = conn.setup().roots[screen_num].root;
        let gc = conn.generate_id().expect("an X id");
        conn.create_gc(gc, root, &CreateGCAux::new())
            .expect("create a GC");
        let (w, h) = (self.width as i16, self.height as i16);
        let fill = |color: u32, x: i16, y: i16, width: u16, height: u16| {
            conn.change_gc(gc, &ChangeGCAux::new().foreground(color))
                .expect("set colour");
            conn.poly_fill_rectangle(
                root,
                gc,
                &[Rectangle {
                    x,
                    y,
                    width,
                    height,
                }],
            )
            .expect("fill");
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

    /// A `Command` for `program` with `DISPLAY` set to this server.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("DISPLAY", &self.display);
        command
    }
}

/// A screenshot of the root window of X display `display` (e.g. `:0`), read over the X
/// protocol (GetImage), so it needs no external tools.
///
/// Supports the 24/32-bit TrueColor layouts that Xvfb and real servers use.
pub fn screenshot(display: &str) -> anyhow::Result<RgbImage> {
    let (conn, screen_num) = x11rb::connect(Some(display))?;
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
