//! The heavy RDP workload of SPEC §7, drawn on an X display: 1280x800, about 40% of the screen
//! changing per frame at 30 frames/s for 10 s.
//!
//! - six solid rectangles with text moving across the left part of the screen;
//! - a text box scrolled up 4 px a frame with `CopyArea`, a new line every 4 frames;
//! - a 256x256 patch of noise sliding 8 px a frame;
//! - the frame code ([`crate::framecode`]) of every frame at the top left.
//!
//! Deterministic: frame `n` always looks the same (a seeded PRNG; no clock in the pixels).
//! Before frame 1 the screen shows frame 0 (the background and code 0) and a small square
//! at the top right that changes colour every 100 ms (FreeRDP's shadow server sends nothing
//! until the screen changes), until a line arrives on stdin (see [`run`]). After each frame
//! the program waits for the X server (`GetInputFocus`, i.e. XSync) and logs
//! `frame N drawn at T` (T in CLOCK_MONOTONIC nanoseconds) to its log file.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeGCAux, ConnectionExt as _, CreateGCAux, Gcontext, ImageFormat, Rectangle, Window,
};

use crate::framecode;

/// The screen the workload is drawn for.
pub const SCREEN: (u16, u16) = (1280, 800);
const BACKGROUND: u32 = 0x1e2430;
/// The band at the top that holds the frame code (and the idle square), nothing else.
const CODE_BAND: i16 = 24;
/// The moving rectangles stay in this area (x, y, w, h).
const RECT_AREA: (i16, i16, i16, i16) = (0, CODE_BAND, 830, 800 - CODE_BAND);
const RECT_SIZE: (u16, u16) = (232, 148);
/// The text box (x, y, w, h).
const TEXT_BOX: (i16, i16, u16, u16) = (850, 40, 420, 360);
const TEXT_BG: u32 = 0xf4f1e8;
const LINE_HEIGHT: u16 = 16;
/// The noise patch slides along this row, between these x positions.
const NOISE_Y: i16 = 500;
const NOISE_X: (i16, i16) = (850, 1016);
const NOISE: u16 = 256;

/// What `deskport-workload` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub display: String,
    pub frames: u16,
    pub fps: u32,
    /// Where `frame N drawn at T` lines go.
    pub log: PathBuf,
    /// Wait for a line on stdin before frame 1 (showing the idle screen meanwhile).
    pub wait_for_start: bool,
}

impl Options {
    /// Parses `--display :N --frames 300 --fps 30 --log FILE [--wait]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            display: std::env::var("DISPLAY").unwrap_or_default(),
            frames: 300,
            fps: 30,
            log: PathBuf::from("workload.log"),
            wait_for_start: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--display" => options.display = value()?,
                "--frames" => options.frames = value()?.parse()?,
                "--fps" => options.fps = value()?.parse()?,
                "--log" => options.log = PathBuf::from(value()?),
                "--wait" => options.wait_for_start = true,
                other => anyhow::bail!(
                    "unknown argument {other:?}; usage: deskport-workload --display :N \
                     [--frames 300] [--fps 30] [--log FILE] [--wait]"
                ),
            }
        }
        anyhow::ensure!(
            options.fps > 0 && options.frames > 0,
            "--fps and --frames > 0"
        );
        Ok(options)
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the log and of the watcher).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// xorshift64*: the workload's only source of "randomness" (seed it with a non-zero value).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 pseudo-random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A moving rectangle: position, velocity, colour.
#[derive(Debug, Clone, Copy)]
struct Mover {
    x: i16,
    y: i16,
    dx: i16,
    dy: i16,
    color: u32,
}

impl Mover {
    fn step(&mut self) {
        let (ax, ay, aw, ah) = RECT_AREA;
        let (w, h) = (RECT_SIZE.0 as i16, RECT_SIZE.1 as i16);
        for (pos, d, lo, hi) in [
            (&mut self.x, &mut self.dx, ax, ax + aw - w),
            (&mut self.y, &mut self.dy, ay, ay + ah - h),
        ] {
            *pos += *d;
            if *pos < lo || *pos > hi {
                *d = -*d;
                *pos = (*pos).clamp(lo, hi);
            }
        }
    }
}

/// The drawing state: one frame after the other, the same for every run.
struct Scene<C: Connection> {
    conn: C,
    root: Window,
    gc: Gcontext,
    movers: Vec<Mover>,
    noise: u32,
    rng: Rng,
}

impl<C: Connection> Scene<C> {
    fn new(conn: C, screen_num: usize) -> anyhow::Result<Self> {
        let screen = &conn.setup().roots[screen_num];
        let (root, depth) = (screen.root, screen.root_depth);
        anyhow::ensure!(
            (screen.width_in_pixels, screen.height_in_pixels) >= SCREEN,
            "the display is {}x{}; the workload needs {}x{}",
            screen.width_in_pixels,
            screen.height_in_pixels,
            SCREEN.0,
            SCREEN.1
        );
        let font = conn.generate_id()?;
        conn.open_font(font, b"fixed")?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            root,
            &CreateGCAux::new().font(font).graphics_exposures(0),
        )?;
        let mut rng = Rng(0x00de_5c90_27f0_0d11);
        let palette = [
            0xd9_4f_3d, 0x3d_a5_d9, 0x6c_c2_4a, 0xe8_b0_2f, 0x9b_59_b6, 0x2e_c4_b6,
        ];
        let movers = palette
            .iter()
            .enumerate()
            .map(|(i, &color)| {
                let r = rng.next();
                Mover {
                    x: (r % 560) as i16,
                    y: CODE_BAND + ((r >> 16) % 600) as i16,
                    dx: [7, -9, 11, -6, 8, -10][i],
                    dy: [5, 6, -4, -7, 9, -5][i],
                    color,
                }
            })
            .collect();
        // The noise lives in a pixmap: every frame copies it to its new place.
        let noise = conn.generate_id()?;
        conn.create_pixmap(depth, noise, root, NOISE, NOISE)?;
        let mut data = vec![0u8; usize::from(NOISE) * usize::from(NOISE) * 4];
        for px in data.chunks_exact_mut(8) {
            px.copy_from_slice(&(rng.next() & 0x00ff_ffff_00ff_ffff).to_le_bytes());
        }
        // In bands of 32 rows: a request stays small without BIG-REQUESTS.
        for (i, band) in data.chunks(usize::from(NOISE) * 4 * 32).enumerate() {
            conn.put_image(
                ImageFormat::Z_PIXMAP,
                noise,
                gc,
                NOISE,
                32,
                0,
                (i * 32) as i16,
                0,
                depth,
                band,
            )?;
        }
        Ok(Self {
            conn,
            root,
            gc,
            movers,
            noise,
            rng,
        })
    }

    fn fill(&self, color: u32, rects: &[Rectangle]) -> anyhow::Result<()> {
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(color))?;
        self.conn.poly_fill_rectangle(self.root, self.gc, rects)?;
        Ok(())
    }

    fn text(&self, fg: u32, bg: u32, x: i16, y: i16, text: &str) -> anyhow::Result<()> {
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(fg).background(bg))?;
        self.conn
            .image_text8(self.root, self.gc, x, y, text.as_bytes())?;
        Ok(())
    }

    fn code(&self, n: u16) -> anyhow::Result<()> {
        let (mut white, mut black) = (Vec::new(), Vec::new());
        for (i, w) in framecode::cells(n).into_iter().enumerate() {
            let cell = Rectangle {
                x: (framecode::ORIGIN.0 + i as u16 * framecode::CELL) as i16,
                y: framecode::ORIGIN.1 as i16,
                width: framecode::CELL,
                height: framecode::CELL,
            };
            if w {
                white.push(cell);
            } else {
                black.push(cell);
            }
        }
        self.fill(0xffffff, &white)?;
        self.fill(0x000000, &black)?;
        Ok(())
    }

    fn noise_x(n: u16) -> i16 {
        // Back and forth between the two ends, 8 px a frame.
        let span = (NOISE_X.1 - NOISE_X.0) / 8;
        let step = i32::from(n) % (2 * i32::from(span));
        let k = if step <= i32::from(span) {
            step
        } else {
            2 * i32::from(span) - step
        };
        NOISE_X.0 + (k as i16) * 8
    }

    /// The screen before frame 1: background, empty text box, rectangles and noise at their
    /// starting places, code 0.
    fn frame_zero(&self) -> anyhow::Result<()> {
        self.fill(
            BACKGROUND,
            &[Rectangle {
                x: 0,
                y: 0,
                width: SCREEN.0,
                height: SCREEN.1,
            }],
        )?;
        let (tx, ty, tw, th) = TEXT_BOX;
        self.fill(
            TEXT_BG,
            &[Rectangle {
                x: tx,
                y: ty,
                width: tw,
                height: th,
            }],
        )?;
        for (i, m) in self.movers.iter().enumerate() {
            self.draw_mover(i, m, 0)?;
        }
        self.conn.copy_area(
            self.noise,
            self.root,
            self.gc,
            0,
            0,
            Self::noise_x(0),
            NOISE_Y,
            NOISE,
            NOISE,
        )?;
        self.code(0)
    }

    fn draw_mover(&self, i: usize, m: &Mover, n: u16) -> anyhow::Result<()> {
        self.fill(
            m.color,
            &[Rectangle {
                x: m.x,
                y: m.y,
                width: RECT_SIZE.0,
                height: RECT_SIZE.1,
            }],
        )?;
        let fg = 0x101010;
        self.text(fg, m.color, m.x + 10, m.y + 20, &format!("window {i}"))?;
        self.text(fg, m.color, m.x + 10, m.y + 40, &format!("frame {n:03}"))?;
        self.text(
            fg,
            m.color,
            m.x + 10,
            m.y + 60,
            &format!("at {:4},{:4}", m.x, m.y),
        )
    }

    /// Draws frame `n` (from 1) over frame `n - 1`.
    fn frame(&mut self, n: u16) -> anyhow::Result<()> {
        let background: Vec<Rectangle> = self
            .movers
            .iter()
            .map(|m| Rectangle {
                x: m.x,
                y: m.y,
                width: RECT_SIZE.0,
                height: RECT_SIZE.1,
            })
            .collect();
        self.fill(BACKGROUND, &background)?;
        for m in &mut self.movers {
            m.step();
        }
        for (i, m) in self.movers.iter().enumerate() {
            self.draw_mover(i, m, n)?;
        }
        // The text box: up 4 px, the bottom 4 px cleared; a new line every 4 frames.
        let (tx, ty, tw, th) = TEXT_BOX;
        self.conn.copy_area(
            self.root,
            self.root,
            self.gc,
            tx,
            ty + 4,
            tx,
            ty,
            tw,
            th - 4,
        )?;
        self.fill(
            TEXT_BG,
            &[Rectangle {
                x: tx,
                y: ty + th as i16 - 4,
                width: tw,
                height: 4,
            }],
        )?;
        if n.is_multiple_of(4) {
            let words = [
                "remote", "desktop", "frame", "scroll", "latency", "bitmap", "planar", "glyph",
                "update", "region", "damage", "cursor", "surface", "codec", "window", "pixel",
            ];
            let mut line = format!("{:04} ", n / 4);
            while line.len() < 64 {
                line.push_str(words[(self.rng.next() % words.len() as u64) as usize]);
                line.push(' ');
            }
            // 6-pixel glyphs: what fits in the box.
            line.truncate(usize::from(tw - 12) / 6);
            self.fill(
                TEXT_BG,
                &[Rectangle {
                    x: tx,
                    y: ty + th as i16 - LINE_HEIGHT as i16,
                    width: tw,
                    height: LINE_HEIGHT,
                }],
            )?;
            self.text(0x202020, TEXT_BG, tx + 6, ty + th as i16 - 4, &line)?;
        }
        // The noise: erase the strip it leaves, copy it to its new place.
        let (old, new) = (Self::noise_x(n - 1), Self::noise_x(n));
        let strip_x = if new > old { old } else { new + NOISE as i16 };
        self.fill(
            BACKGROUND,
            &[Rectangle {
                x: strip_x,
                y: NOISE_Y,
                width: new.abs_diff(old),
                height: NOISE,
            }],
        )?;
        self.conn.copy_area(
            self.noise, self.root, self.gc, 0, 0, new, NOISE_Y, NOISE, NOISE,
        )?;
        self.code(n)
    }

    fn sync(&self) -> anyhow::Result<()> {
        self.conn.get_input_focus()?.reply()?;
        Ok(())
    }

    fn idle_square(&self, on: bool) -> anyhow::Result<()> {
        self.fill(
            if on { 0x00ff00 } else { 0xff00ff },
            &[Rectangle {
                x: SCREEN.0 as i16 - 16,
                y: 4,
                width: 8,
                height: 8,
            }],
        )?;
        self.conn.flush()?;
        Ok(())
    }
}

/// The workload drawn frame by frame at the caller's pace (for offline measurements: draw a
/// frame, then read the screen).
pub struct Stepper {
    scene: Scene<x11rb::rust_connection::RustConnection>,
    next: u16,
}

impl std::fmt::Debug for Stepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stepper(next frame {})", self.next)
    }
}

impl Stepper {
    /// Draws frame 0 on `display` and waits for the X server.
    pub fn open(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = crate::x_connect(display)
            .map_err(|e| anyhow::anyhow!("connect to X display {display:?}: {e}"))?;
        let scene = Scene::new(conn, screen_num)?;
        scene.frame_zero()?;
        scene.sync()?;
        Ok(Self { scene, next: 1 })
    }

    /// Draws the next frame and waits for the X server; its number.
    pub fn step(&mut self) -> anyhow::Result<u16> {
        let n = self.next;
        self.scene.frame(n)?;
        self.scene.sync()?;
        self.next += 1;
        Ok(n)
    }
}

/// Draws the workload on `options.display`: frame 0, then (after the start line on stdin when
/// `wait_for_start`) frames 1 to `options.frames` at `options.fps`, each logged. Returns when
/// the last frame is drawn.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let (conn, screen_num) = crate::x_connect(&options.display)
        .map_err(|e| anyhow::anyhow!("connect to X display {:?}: {e}", options.display))?;
    let mut scene = Scene::new(conn, screen_num)?;
    scene.frame_zero()?;
    scene.sync()?;
    let mut log = std::io::BufWriter::new(std::fs::File::create(&options.log)?);
    writeln!(log, "frame 0 drawn at {}", monotonic_ns())?;
    log.flush()?;
    if options.wait_for_start {
        // Until the start line: a small square changes colour every 100 ms.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = tx.send(());
        });
        let mut on = false;
        while rx.recv_timeout(Duration::from_millis(100)).is_err() {
            on = !on;
            scene.idle_square(on)?;
        }
        scene.idle_square(false)?;
    }
    let period = Duration::from_secs(1) / options.fps;
    let start = Instant::now();
    for n in 1..=options.frames {
        let due = start + period * u32::from(n - 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        scene.frame(n)?;
        scene.sync()?;
        writeln!(log, "frame {n} drawn at {}", monotonic_ns())?;
    }
    log.flush()?;
    Ok(())
}

/// Reads a workload log: (frame, CLOCK_MONOTONIC ns) in order.
pub fn read_log(path: &std::path::Path) -> anyhow::Result<Vec<(u16, u64)>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.nth(2)) {
                (Some("frame"), Some(n), Some(t)) => Ok((n.parse()?, t.parse()?)),
                _ => anyhow::bail!("not a workload log line: {line:?}"),
            }
        })
        .collect()
}
