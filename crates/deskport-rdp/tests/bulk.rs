//! Bulk compression for clients that offer XCRUSH (RDP 6.1) over a long session: the update
//! PDUs of many frames of a heavy screen (moving rectangles, a scrolling text box and a
//! sliding patch of noise, as in the RDP benchmark's workload) must all decompress, and
//! compress as well at the end as at the start.
//!
//! What went wrong with XCRUSH (why the heavy benchmark's bytes varied from session to
//! session):
//! ironrdp-bulk 0.2's XCRUSH compressor, like FreeRDP's `xcrush_compress`, resets its whole
//! history (`reset(true)`: chunk index and level-2 MPPC) and returns flags 0 (send it plain)
//! when a PDU does not shrink — no level-1 match and MPPC cannot help. A patch of noise seen
//! for the first time does not shrink; once its PDUs have reset the history, the next frame's
//! noise finds nothing to match either and resets it again, and so on for the rest of the
//! session, taking the history of everything else with it. A session whose first noise
//! shared a PDU with something that matched keeps the noise in its history and matches it
//! frame after frame instead: two stable states, chosen by how the first updates happened to
//! be grouped into PDUs.
//!
//! Not fixable in the encoder by routing some PDUs past the compressor: the noise is most of
//! the bytes, and only the history makes it cheap. The fix belongs in the compressor: keep the
//! history and send a PDU that does not shrink as level-1 literals (2 bytes more). Tried on a
//! patched copy of ironrdp-bulk with level 2 off: wire/plain 0.56 for frames 2-21 and 0.28 for
//! the last 20 of 120 (1.00 today), every PDU decompressing; with level 2 on, ironrdp-bulk's
//! own decompressor rejected the first PDU of frame 2 ("match output offset out of order"), a
//! second problem on the path the reset hides today, to be found before that fix ships.
//!
//! What the server does meanwhile: a client that offers XCRUSH gets NCRUSH (RDP 6.0), which
//! every such client decodes and which keeps its history (`encode::bitmap`); the test below
//! holds it to compressing as well at the end of a long session as at the start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use deskport_desktop::{Area, Frame};
use deskport_rdp::encode::diff::Diff;
use deskport_rdp::encode::{BitmapEncoder as Encoder, ScreenEncoder as _};
use deskport_rdp::Codec;
use deskport_testsupport::workload::Rng;
use ironrdp_bulk::{BulkCompressor, CompressionType as BulkType};
use ironrdp_pdu::rdp::client_info::CompressionType;

const W: u16 = 640;
const H: u16 = 400;

/// A heavy screen drawn frame after frame in memory, with the areas each frame changed.
struct Screen {
    pixels: Vec<u8>,
    rects: Vec<(i32, i32, i32, i32, u32)>,
    noise: Vec<u32>,
    rng: Rng,
    n: u32,
}

const BG: u32 = 0x1e2430;
const RECT: (i32, i32) = (116, 74);
const TEXT: (u16, u16, u16, u16) = (420, 20, 210, 180);
const NOISE: u16 = 128;
const NOISE_Y: u16 = 250;

impl Screen {
    fn new() -> Self {
        let mut rng = Rng(0x00de_5c90_27f0_0d11);
        let noise = (0..usize::from(NOISE) * usize::from(NOISE))
            .map(|_| (rng.next() & 0xff_ffff) as u32)
            .collect();
        let rects = (0..6)
            .map(|i| {
                let r = rng.next();
                (
                    (r % 280) as i32,
                    ((r >> 16) % 300) as i32,
                    [7, -9, 11, -6, 8, -10][i],
                    [5, 6, -4, -7, 9, -5][i],
                    [0xd94f3d, 0x3da5d9, 0x6cc24a, 0xe8b02f, 0x9b59b6, 0x2ec4b6][i],
                )
            })
            .collect();
        let mut s = Self {
            pixels: vec![0; usize::from(W) * usize::from(H) * 4],
            rects,
            noise,
            rng,
            n: 0,
        };
        s.fill((0, 0, W, H), BG);
        s.fill(TEXT, 0xf4f1e8);
        s
    }

    fn put(&mut self, x: u16, y: u16, color: u32) {
        let at = (usize::from(y) * usize::from(W) + usize::from(x)) * 4;
        self.pixels[at..at + 4].copy_from_slice(&color.to_le_bytes());
    }

    fn fill(&mut self, (x, y, w, h): Area, color: u32) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, color);
            }
        }
    }

    /// Glyph-like dots: text on a solid background.
    fn text(&mut self, x: u16, y: u16, chars: usize, color: u32, seed: u64) {
        let mut r = Rng(seed | 1);
        for c in 0..chars {
            let bits = r.next();
            for i in 0..40u16 {
                if bits >> i & 1 == 1 {
                    self.put(x + c as u16 * 6 + i % 5, y + i / 5, color);
                }
            }
        }
    }

    fn frame(&self) -> Frame {
        Frame {
            width: W,
            height: H,
            data: Arc::new(self.pixels.clone()),
            generation: 0,
        }
    }

    fn noise_x(n: u32) -> u16 {
        let k = n % 40;
        400 + 8 * if k <= 20 { k } else { 40 - k } as u16
    }

    /// Draws the next frame; the areas it changed.
    fn step(&mut self) -> Vec<Area> {
        self.n += 1;
        let n = self.n;
        let mut areas = Vec::new();
        for i in 0..self.rects.len() {
            let (x, y, dx, dy, color) = self.rects[i];
            self.fill((x as u16, y as u16, RECT.0 as u16, RECT.1 as u16), BG);
            let (mut nx, mut ny, mut ndx, mut ndy) = (x + dx, y + dy, dx, dy);
            if !(0..=400 - RECT.0).contains(&nx) {
                ndx = -dx;
                nx = nx.clamp(0, 400 - RECT.0);
            }
            if !(0..=i32::from(H) - RECT.1).contains(&ny) {
                ndy = -dy;
                ny = ny.clamp(0, i32::from(H) - RECT.1);
            }
            self.rects[i] = (nx, ny, ndx, ndy, color);
            self.fill((nx as u16, ny as u16, RECT.0 as u16, RECT.1 as u16), color);
            self.text(
                nx as u16 + 5,
                ny as u16 + 5,
                12,
                0x101010,
                u64::from(n) << 8 | i as u64,
            );
            let (x0, y0) = (x.min(nx) as u16, y.min(ny) as u16);
            areas.push((
                x0,
                y0,
                (x.max(nx) + RECT.0) as u16 - x0,
                (y.max(ny) + RECT.1) as u16 - y0,
            ));
        }
        // The text box: up 4 px, a new line every 4 frames.
        let (tx, ty, tw, th) = TEXT;
        let row = usize::from(W) * 4;
        for y in ty..ty + th - 4 {
            let (dst, src) = (usize::from(y) * row, usize::from(y + 4) * row);
            let x = usize::from(tx) * 4;
            self.pixels
                .copy_within(src + x..src + x + usize::from(tw) * 4, dst + x);
        }
        self.fill((tx, ty + th - 4, tw, 4), 0xf4f1e8);
        if n.is_multiple_of(4) {
            let seed = self.rng.next();
            self.text(tx + 4, ty + th - 12, 33, 0x202020, seed);
        }
        areas.push(TEXT);
        // The noise slides 8 px.
        let (old, new) = (Self::noise_x(n - 1), Self::noise_x(n));
        self.fill((old, NOISE_Y, NOISE, NOISE), BG);
        for y in 0..NOISE {
            for x in 0..NOISE {
                let c = self.noise[usize::from(y) * usize::from(NOISE) + usize::from(x)];
                self.put(new + x, NOISE_Y + y, c);
            }
        }
        areas.push((old.min(new), NOISE_Y, NOISE + 8, NOISE));
        areas
    }
}

/// The update PDUs in `out`: (compression flags byte with the type, data).
fn updates(out: &[u8]) -> Vec<(Option<u8>, Vec<u8>)> {
    use ironrdp_core::{decode_cursor, ReadCursor};
    use ironrdp_pdu::fast_path::{FastPathHeader, FastPathUpdatePdu};
    let mut cursor = ReadCursor::new(out);
    let mut found = Vec::new();
    while !cursor.is_empty() {
        let _header: FastPathHeader = decode_cursor(&mut cursor).unwrap();
        let update: FastPathUpdatePdu<'_> = decode_cursor(&mut cursor).unwrap();
        let flags = update
            .compression_flags
            .map(|f| f.bits() | update.compression_type.map_or(0, |t| t.as_u8()));
        found.push((flags, update.data.to_vec()));
    }
    found
}

/// Runs `frames` frames of the heavy screen through a planar encoder for a client offering
/// XCRUSH (it gets NCRUSH) and through
/// the client's decompressor, checking that every PDU decompresses to the plain one; returns
/// (plain bytes, bytes on the wire, PDUs sent without compression) per frame, the whole
/// first screen at index 0.
fn session(frames: usize) -> Vec<(usize, usize, usize)> {
    let mut screen = Screen::new();
    let mut plain = Encoder::new(32, Codec::Auto, true).with_planar_alpha(false);
    let mut packed = Encoder::new(32, Codec::Auto, true)
        .with_planar_alpha(false)
        .with_bulk_compression(Some(CompressionType::Rdp61));
    let mut client = BulkCompressor::new(BulkType::Rdp61);
    let mut per_frame = Vec::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut diff = Diff::new();
    for i in 0..=frames {
        a.clear();
        b.clear();
        let (frame, ops) = if i == 0 {
            let frame = screen.frame();
            let ops = diff.ops(&frame, None, plain.op_kinds());
            (frame, ops)
        } else {
            let areas = screen.step();
            let frame = screen.frame();
            let ops = diff.ops(&frame, Some(&areas), plain.op_kinds());
            (frame, ops)
        };
        plain.encode(&frame, &ops, &mut a).unwrap();
        packed.encode(&frame, &ops, &mut b).unwrap();
        let (expected, sent) = (updates(&a), updates(&b));
        assert_eq!(expected.len(), sent.len());
        let mut uncompressed = 0;
        for (j, ((_, want), (flags, data))) in expected.iter().zip(&sent).enumerate() {
            let flags = u32::from(flags.unwrap_or(0));
            if flags & 0x20 == 0 {
                uncompressed += 1;
            }
            let got = client
                .decompress(data, flags)
                .unwrap_or_else(|e| panic!("frame {i}, PDU {j}: {e}"));
            assert_eq!(got, want.as_slice(), "frame {i}, PDU {j} decompressed");
        }
        per_frame.push((a.len(), b.len(), uncompressed));
    }
    per_frame
}

#[test]
fn every_pdu_of_a_long_heavy_session_decompresses() {
    let per_frame = session(60);
    // The first screen (mostly solid colours) compresses.
    assert!(per_frame[0].1 < per_frame[0].0 / 4, "{:?}", per_frame[0]);
}

/// What the server sends a client that offers XCRUSH (NCRUSH, see the module's note) compresses
/// as well at the end of a long session as at the start: no reset, no state it falls into.
/// Measured: wire/plain 0.81 for frames 2-21 and 0.68 for the last 20 of 120 (NCRUSH's 64 kB
/// history cannot hold this screen's noise, which goes as pixels here; the live workload's
/// noise moves whole and goes as copies).
#[test]
fn compresses_as_well_at_the_end_of_a_heavy_session_as_at_the_start() {
    let frames = 120;
    let per_frame = session(frames);
    let ratio = |range: std::ops::Range<usize>| {
        let (p, w) = per_frame[range]
            .iter()
            .fold((0, 0), |(p, w), f| (p + f.0, w + f.1));
        w as f64 / p as f64
    };
    // Frames 2-21 (the history has seen the noise once) against the last 20.
    let (early, late) = (ratio(2..22), ratio(frames - 19..frames + 1));
    eprintln!(
        "wire/plain: frames 2-21 {early:.3}, last 20 {late:.3}; first frames (plain, wire, \
         plain PDUs): {:?}",
        &per_frame[..8]
    );
    assert!(
        late <= early * 1.1 + 0.01,
        "compression got worse during the session: {early:.3} of the plain bytes early, \
         {late:.3} at the end"
    );
    assert!(early < 0.9 && late < 0.9, "{early:.3} / {late:.3}");
}

/// MPPC (RDP5, the level-2 coder inside XCRUSH) on data that barely compresses: what it marks
/// compressed must decompress to the input.
#[test]
fn mppc_output_that_barely_shrinks_decompresses() {
    let mut rng = Rng(7);
    let mut bad = Vec::new();
    // One session: the contexts live across packets, as in XCRUSH.
    let mut sender = BulkCompressor::new(BulkType::Rdp5);
    let mut receiver = BulkCompressor::new(BulkType::Rdp5);
    for case in 0..400usize {
        // Noise with a share of repeated bytes: from incompressible to barely compressible.
        let len = 200 + (rng.next() % 15_000) as usize;
        let repeat = case % 40;
        let data: Vec<u8> = (0..len)
            .map(|i| {
                if (i / 7) % 40 < repeat {
                    (i % 3) as u8
                } else if case % 2 == 0 {
                    // Literals below 0x80 cost 8 bits: output about as long as the input.
                    (rng.next() & 0x7f) as u8
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        let (size, flags) = sender.compress(&data).unwrap();
        if flags & 0x20 == 0 {
            // Sent plain: the receiver still learns of a flush.
            receiver.decompress(&data, flags).unwrap();
            continue;
        }
        let packed = sender.compressed_data(size).to_vec();
        match receiver.decompress(&packed, flags) {
            Ok(out) if out == data.as_slice() => {}
            other => bad.push((
                case,
                len,
                size,
                other.map(<[u8]>::len).map_err(|e| e.to_string()),
            )),
        }
    }
    assert!(
        bad.is_empty(),
        "(case, input, output, decompressed): {bad:?}"
    );
}
