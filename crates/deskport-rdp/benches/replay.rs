//! The server's screen path on the heavy workload of SPEC §7, without a client: the workload
//! (`deskport_testsupport::workload`) draws frame after frame on an Xvfb, the desktop reads
//! each one as a session does (XDamage, MIT-SHM), the diff turns it into ops and an encoder
//! into bytes. Per variant: bytes per frame, what the ops were (copies, fills, pixels), and
//! the server CPU per frame of the diff and the encoder. The variants are the same frames, so
//! they compare exactly; the live benchmark (`deskport --bench heavy`) adds the network, the
//! client and the peers.
//!
//!   cargo bench -p deskport-rdp --bench replay      (REPLAY_FRAMES=300 by default;
//!                                                    REPLAY_ONLY=TEXT runs the variants
//!                                                    whose name contains TEXT)
//!
//! The browser console's relay (`deskport_client::browser`) is replayed too: its own diff and
//! its image files (PNG at three levels), the bytes on its WebSocket before TLS.
//!
//! Lines starting with `BENCH|` are read by `scripts/bench`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use deskport_client::browser::{encode_frame, Picture};
use deskport_desktop::x11::{Capture, X11Desktop};
use deskport_desktop::{Desktop as _, Frame};
use deskport_rdp::encode::diff::Diff;
use deskport_rdp::encode::orders::OrderKinds;
use deskport_rdp::encode::{BitmapEncoder, Codec, Op, OpKinds, ScreenEncoder};
use deskport_testsupport::workload::{Stepper, SCREEN};
use deskport_testsupport::Xvfb;
use ironrdp_pdu::rdp::client_info::CompressionType;

/// One way of sending the screen.
struct Variant {
    name: &'static str,
    kinds: OpKinds,
    /// Copies and fills go as drawing orders (as xfreerdp takes them), measured; else their
    /// bytes are estimated.
    orders: bool,
    encoder: BitmapEncoder,
    diff: Diff,
    bytes: usize,
    copies: usize,
    fills: usize,
    pixels: usize,
    cpu: Duration,
}

impl Variant {
    fn new(name: &'static str, kinds: OpKinds, bulk: Option<CompressionType>) -> Self {
        Self {
            name,
            kinds,
            orders: false,
            encoder: BitmapEncoder::new(32, Codec::Auto, true)
                .with_planar_alpha(false)
                .with_bulk_compression(bulk),
            diff: Diff::new(),
            bytes: 0,
            copies: 0,
            fills: 0,
            pixels: 0,
            cpu: Duration::ZERO,
        }
    }

    /// Copies and fills as the drawing orders xfreerdp takes, in the real encoder; text also
    /// as 24-bit interleaved RLE where that is smaller than planar, as xfreerdp gets it
    /// (`mixed`).
    fn with_orders(mut self, mixed: bool) -> Self {
        self.orders = true;
        self.encoder = self.encoder.with_orders(OrderKinds {
            scr_blt: true,
            opaque_rect: true,
            multi_opaque_rect: true,
        });
        self.encoder =
            std::mem::replace(&mut self.encoder, BitmapEncoder::new(32, Codec::Auto, true))
                .with_mixed_depth(mixed);
        self
    }

    /// Sends `frame` (its damage since the last one); counted unless `warm_up`.
    fn send(&mut self, frame: &Frame, damage: Option<&[(u16, u16, u16, u16)]>, warm_up: bool) {
        let started = Instant::now();
        let ops = self.diff.ops(frame, damage, self.kinds);
        let mut out = Vec::new();
        // (The bitmap encoder sends fills and copies as pixels; their bytes are estimated
        // below as orders would carry them.)
        if self.orders {
            self.encoder.encode(frame, &ops, &mut out).unwrap();
        } else {
            let as_pixels: Vec<Op> = ops
                .iter()
                .filter(|op| matches!(op, Op::Pixels(_)))
                .cloned()
                .collect();
            self.encoder.encode(frame, &as_pixels, &mut out).unwrap();
        }
        let took = started.elapsed();
        if warm_up {
            return;
        }
        if std::env::var("REPLAY_DUMP").is_ok_and(|d| d == "1") {
            for op in &ops {
                eprintln!("  {op:?}");
            }
            eprintln!("--");
        }
        self.cpu += took;
        self.bytes += out.len();
        for op in &ops {
            match op {
                // A ScrBlt order: about 20 bytes; an OpaqueRect one: about 15.
                Op::Copy { .. } => {
                    self.copies += 1;
                    self.bytes += if self.orders { 0 } else { 20 };
                }
                Op::Fill { rects, .. } => {
                    self.fills += rects.len();
                    self.bytes += if self.orders { 0 } else { 15 * rects.len() };
                }
                Op::Pixels(r) => self.pixels += usize::from(r.width) * usize::from(r.height),
            }
        }
    }
}

/// The same frames as the browser console's relay sends them: its own diff (copies, fills)
/// and the pixels as `picture` image files (what travels on the WebSocket, before TLS).
struct BrowserVariant {
    picture: Picture,
    diff: Diff,
    bytes: usize,
    images: usize,
    cpu: Duration,
    stats: deskport_client::browser::Stats,
}

impl BrowserVariant {
    fn new(picture: Picture) -> Self {
        Self {
            picture,
            diff: Diff::new(),
            bytes: 0,
            images: 0,
            cpu: Duration::ZERO,
            stats: Default::default(),
        }
    }

    fn name(&self) -> String {
        format!("as the browser gets it: {}", self.picture.name())
    }

    fn send(&mut self, frame: &Frame, damage: Option<&[(u16, u16, u16, u16)]>, warm_up: bool) {
        let started = Instant::now();
        let kinds = OpKinds {
            copy: true,
            fill: true,
        };
        let ops = self.diff.ops(frame, damage, kinds);
        let message = encode_frame(1, frame, &ops, self.picture, &self.stats).unwrap();
        if warm_up {
            return;
        }
        self.cpu += started.elapsed();
        self.bytes += message.len();
        self.images += ops.iter().filter(|op| matches!(op, Op::Pixels(_))).count();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let frames: u16 = std::env::var("REPLAY_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let xvfb = Xvfb::start(SCREEN.0, SCREEN.1);
    let mut workload = Stepper::open(xvfb.display()).expect("draw frame 0");
    let desktop = X11Desktop::connect_with(xvfb.display(), Capture::Damage, true).unwrap();
    let all = OpKinds {
        copy: true,
        fill: true,
    };
    let xcrush = Some(CompressionType::Rdp61);
    let variants = [
        Variant::new("pixels, planar + XCRUSH", OpKinds::default(), xcrush),
        Variant::new(
            "fills + pixels, planar + XCRUSH",
            OpKinds {
                copy: false,
                fill: true,
            },
            xcrush,
        ),
        Variant::new("copies + fills + pixels, planar + XCRUSH", all, xcrush),
        Variant::new(
            "copies + fills + pixels, planar + MPPC-64K",
            all,
            Some(CompressionType::K64),
        ),
        Variant::new(
            "copies + fills + pixels, planar + NCRUSH",
            all,
            Some(CompressionType::Rdp6),
        ),
        Variant::new("copies + fills + pixels, planar", all, None),
        Variant::new(
            "as xfreerdp gets it: orders, planar + NCRUSH",
            all,
            Some(CompressionType::Rdp6),
        )
        .with_orders(false),
        Variant::new(
            "as xfreerdp gets it: orders, planar + RLE + NCRUSH",
            all,
            Some(CompressionType::Rdp6),
        )
        .with_orders(true),
        Variant::new("as xfreerdp gets it: orders, planar + RLE", all, None).with_orders(true),
    ];
    // REPLAY_ONLY=TEXT keeps the variants whose name contains TEXT (e.g. for a profile).
    let only = std::env::var("REPLAY_ONLY").unwrap_or_default();
    let mut variants: Vec<Variant> = variants
        .into_iter()
        .filter(|v| v.name.contains(only.as_str()))
        .collect();
    let mut browsers: Vec<BrowserVariant> = Picture::ALL
        .into_iter()
        .map(BrowserVariant::new)
        .filter(|v| v.name().contains(only.as_str()))
        .collect();
    let first = desktop.capture().unwrap();
    for v in &mut variants {
        v.send(&first, None, true);
    }
    for v in &mut browsers {
        v.send(&first, None, true);
    }
    let mut generation = first.generation;
    for _ in 0..frames {
        workload.step().unwrap();
        let frame = desktop.capture().unwrap();
        let damage = desktop.changes_since(generation);
        generation = frame.generation;
        for v in &mut variants {
            v.send(&frame, damage.as_deref(), false);
        }
        for v in &mut browsers {
            v.send(&frame, damage.as_deref(), false);
        }
    }
    let n = f64::from(frames);
    println!(
        "heavy workload, {frames} frames of {}x{}, replayed offline:",
        SCREEN.0, SCREEN.1
    );
    let baseline = variants.first().map_or(0.0, |v| v.bytes as f64 / n);
    for v in &variants {
        let per_frame = v.bytes as f64 / n;
        println!(
            "  {:<42} {:>9.1} kB/frame ({:>6.2} MB in all)  copies {:>5.1}/frame  fills {:>5.1}/frame  pixels {:>8.0}/frame  cpu {:>6.2} ms/frame",
            v.name,
            per_frame / 1e3,
            v.bytes as f64 / 1e6,
            v.copies as f64 / n,
            v.fills as f64 / n,
            v.pixels as f64 / n,
            v.cpu.as_secs_f64() * 1e3 / n,
        );
        println!(
            "BENCH|replay {}|{:.3}|kB/frame|{:.3}|kB/frame (pixels only)|lower",
            v.name,
            per_frame / 1e3,
            baseline / 1e3
        );
    }
    for v in &browsers {
        let per_frame = v.bytes as f64 / n;
        println!(
            "  {:<42} {:>9.1} kB/frame ({:>6.2} MB in all)  images {:>5.1}/frame  cpu {:>6.2} ms/frame",
            v.name(),
            per_frame / 1e3,
            v.bytes as f64 / 1e6,
            v.images as f64 / n,
            v.cpu.as_secs_f64() * 1e3 / n,
        );
        println!(
            "BENCH|replay {}|{:.3}|kB/frame|{:.3}|kB/frame (pixels only)|lower",
            v.name(),
            per_frame / 1e3,
            baseline / 1e3
        );
        println!(
            "BENCH|replay {}: relay CPU|{:.2}|ms/frame|{:.2}|ms/frame (PNG fast)|lower",
            v.name(),
            v.cpu.as_secs_f64() * 1e3 / n,
            browsers[0].cpu.as_secs_f64() * 1e3 / n
        );
    }
}
