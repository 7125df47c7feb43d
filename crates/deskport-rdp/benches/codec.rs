//! Bytes per frame of the screen-update codecs on the RDP benchmark's animation, computed
//! offline (no X server, no client): the animation's frames are drawn into a frame buffer,
//! each frame's changed area is encoded as a session would, and the bytes counted. This is
//! how the codec choice is compared without the noise of a live run.
//!
//!   cargo bench -p deskport-rdp --bench codec
//!
//! Lines starting with `BENCH|` are read by `scripts/bench`.

#![allow(clippy::expect_used)]

use std::sync::Arc;

use deskport_desktop::Frame;
use deskport_rdp::encode::diff::Diff;
use deskport_rdp::encode::{BitmapEncoder as Encoder, Codec, ScreenEncoder as _};
use ironrdp_pdu::rdp::client_info::CompressionType;

const SCREEN: (u16, u16) = (1024, 768);
const BLOCK: (u16, u16) = (320, 240);
const FRAMES: u32 = 300;

/// Frame `n` of `Xvfb::animate_workload`: the block's pixels and where it is drawn.
fn block(n: u32) -> (Vec<u8>, u16, u16) {
    let (w, h) = (u32::from(BLOCK.0), u32::from(BLOCK.1));
    let mut data = vec![0u8; (w * h * 4) as usize];
    for (i, px) in data.chunks_exact_mut(4).enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        let t = n.wrapping_mul(7);
        px[0] = (x + t) as u8;
        px[1] = (y * 2 + t / 2) as u8;
        px[2] = if (x / 8 + y / 8 + n).is_multiple_of(2) {
            0xe0
        } else {
            0x20
        };
        px[3] = 0;
    }
    let x = ((n * 6) % u32::from(SCREEN.0 - BLOCK.0)) as u16;
    let y = ((n * 4) % u32::from(SCREEN.1 - BLOCK.1)) as u16;
    (data, x, y)
}

/// Bytes for the whole animation, every `step`-th frame sent (the damage of the frames in
/// between accumulates), with `encoder`.
fn run(mut encoder: Encoder, step: u32) -> f64 {
    let stride = usize::from(SCREEN.0) * 4;
    // A test-pattern-like background: stripes.
    let mut screen: Vec<u8> = (0..usize::from(SCREEN.0) * usize::from(SCREEN.1))
        .flat_map(|i| {
            let v = ((i % usize::from(SCREEN.0)) / 64 * 40) as u8;
            [v, 255 - v, 128, 0]
        })
        .collect();
    let mut bytes = 0usize;
    let mut damage = Vec::new();
    // The client shows the background already (its first frame is not counted).
    let mut diff = Diff::new();
    let background = Frame {
        width: SCREEN.0,
        height: SCREEN.1,
        data: Arc::new(screen.clone()),
        generation: 0,
    };
    diff.ops(&background, None, encoder.op_kinds());
    for n in 0..FRAMES {
        let (data, x, y) = block(n);
        for row in 0..usize::from(BLOCK.1) {
            let start = (usize::from(y) + row) * stride + usize::from(x) * 4;
            let src = &data[row * usize::from(BLOCK.0) * 4..][..usize::from(BLOCK.0) * 4];
            screen[start..start + src.len()].copy_from_slice(src);
        }
        damage.push((x, y, BLOCK.0, BLOCK.1));
        if (n + 1) % step != 0 {
            continue;
        }
        // The damage of several frames as one area around them (a region would be exact).
        let x0 = damage.iter().map(|d| d.0).min().unwrap_or(0);
        let y0 = damage.iter().map(|d| d.1).min().unwrap_or(0);
        let x1 = damage.iter().map(|d| d.0 + d.2).max().unwrap_or(0);
        let y1 = damage.iter().map(|d| d.1 + d.3).max().unwrap_or(0);
        damage.clear();
        let frame = Frame {
            width: SCREEN.0,
            height: SCREEN.1,
            data: Arc::new(screen.clone()),
            generation: u64::from(n) + 1,
        };
        let ops = diff.ops(
            &frame,
            Some(&[(x0, y0, x1 - x0, y1 - y0)]),
            encoder.op_kinds(),
        );
        let mut out = Vec::new();
        encoder.encode(&frame, &ops, &mut out).expect("encode");
        bytes += out.len();
    }
    bytes as f64 / f64::from(FRAMES / step)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let xcrush = Some(CompressionType::Rdp61);
    let planar_xcrush = run(
        Encoder::new(32, Codec::Auto, true)
            .with_bulk_compression(xcrush)
            .with_planar_alpha(false),
        1,
    );
    let variants = [
        (
            "64x32 tiles",
            run(
                Encoder::new(32, Codec::Auto, true)
                    .with_bulk_compression(xcrush)
                    .with_planar_alpha(false)
                    .with_tiles_only(),
                1,
            ),
        ),
        (
            "planar with an alpha plane + XCRUSH",
            run(
                Encoder::new(32, Codec::Auto, true).with_bulk_compression(xcrush),
                1,
            ),
        ),
        (
            "raw + XCRUSH",
            run(
                Encoder::new(32, Codec::Raw, true).with_bulk_compression(xcrush),
                1,
            ),
        ),
        (
            "planar + MPPC 64K",
            run(
                Encoder::new(32, Codec::Auto, true)
                    .with_bulk_compression(Some(CompressionType::K64))
                    .with_planar_alpha(false),
                1,
            ),
        ),
        (
            "planar alone",
            run(
                Encoder::new(32, Codec::Auto, true).with_planar_alpha(false),
                1,
            ),
        ),
    ];
    for (name, value) in variants {
        println!(
            "BENCH|codec bytes per frame, planar + XCRUSH vs {name}|{:.2}|kB|{:.2}|kB {name}|lower",
            planar_xcrush / 1000.0,
            value / 1000.0
        );
    }
    let every_other = run(
        Encoder::new(32, Codec::Auto, true)
            .with_bulk_compression(xcrush)
            .with_planar_alpha(false),
        2,
    );
    println!(
        "BENCH|codec bytes per second at 30 vs 15 frames/s, planar + XCRUSH|{:.1}|kB/s|{:.1}|kB/s at 15 frames/s|lower",
        planar_xcrush * 30.0 / 1000.0,
        every_other * 15.0 / 1000.0
    );
}
