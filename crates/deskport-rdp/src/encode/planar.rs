//! RDP 6.0 planar bitmap streams (MS-RDPEGDI 2.2.2.5.1) with RLE and an alpha plane, written
//! straight from the captured pixels.
//!
//! ironrdp-graphics has an encoder producing the same bytes (a test compares the two), but
//! it spent about half of the server's CPU in its iterator plumbing during the benchmark's
//! animation (profiled with perf); this one works on slices and reuses its buffers.

/// The format header: RLE, alpha plane present, ARGB planes without colour loss.
const HEADER_RLE_WITH_ALPHA: u8 = 0x10;
/// The format header's "no alpha plane" flag.
const NO_ALPHA: u8 = 0x20;

/// Reusable buffers for encoding planes.
#[derive(Debug, Default)]
pub struct PlanarEncoder {
    plane: Vec<u8>,
    row: Vec<u8>,
    raw: Vec<u8>,
}

impl PlanarEncoder {
    /// Appends the stream for a `width`x`height` area to `out`: the format header, then the
    /// alpha (all opaque; left out with the "no alpha" flag when `alpha` is false), red,
    /// green and blue planes. `row(y)` gives the area's *top-down* row `y` as `[b, g, r, x]`
    /// pixels (at least `width * 4` bytes); the stream's rows are bottom-up, as bitmap
    /// updates want them.
    pub fn encode<'a>(
        &mut self,
        width: usize,
        height: usize,
        alpha: bool,
        row: impl Fn(usize) -> &'a [u8],
        out: &mut Vec<u8>,
    ) {
        self.encode_rows(width, height, alpha, false, row, out);
    }

    /// The same stream with its rows top-down and no alpha plane, as the graphics pipeline
    /// wants it (MS-RDPEGFX 2.2.4.2: planar in WireToSurface1 is not flipped; opacity has a
    /// codec of its own there).
    pub fn encode_top_down<'a>(
        &mut self,
        width: usize,
        height: usize,
        row: impl Fn(usize) -> &'a [u8],
        out: &mut Vec<u8>,
    ) {
        self.encode_rows(width, height, false, true, row, out);
    }

    fn encode_rows<'a>(
        &mut self,
        width: usize,
        height: usize,
        alpha: bool,
        top_down: bool,
        row: impl Fn(usize) -> &'a [u8],
        out: &mut Vec<u8>,
    ) {
        if alpha {
            out.push(HEADER_RLE_WITH_ALPHA);
            // Alpha: every pixel opaque.
            self.plane.clear();
            self.plane.resize(width * height, 0xff);
            self.encode_plane(width, height, out);
        } else {
            out.push(HEADER_RLE_WITH_ALPHA | NO_ALPHA);
        }
        // Red, green, blue (byte 2, 1, 0 of each pixel), rows in stream order.
        for channel in [2usize, 1, 0] {
            self.plane.clear();
            for i in 0..height {
                let y = if top_down { i } else { height - 1 - i };
                let pixels = &row(y)[..width * 4];
                self.plane
                    .extend(pixels.chunks_exact(4).map(|p| p[channel]));
            }
            self.encode_plane(width, height, out);
        }
    }

    /// One plane: the first scanline as it is, every other one as deltas from the scanline
    /// before it (MS-RDPEGDI 3.1.9.2.1), each run-length encoded.
    fn encode_plane(&mut self, width: usize, height: usize, out: &mut Vec<u8>) {
        for y in 0..height {
            let line = &self.plane[y * width..(y + 1) * width];
            self.row.clear();
            if y == 0 {
                self.row.extend_from_slice(line);
            } else {
                let above = &self.plane[(y - 1) * width..y * width];
                self.row
                    .extend(line.iter().zip(above).map(|(&v, &a)| delta(a, v)));
            }
            scanline(&self.row, &mut self.raw, out);
        }
    }
}

/// A value against the one above it, in the sign-magnitude form of MS-RDPEGDI 3.1.9.2.1.
fn delta(above: u8, value: u8) -> u8 {
    let d = value.wrapping_sub(above);
    if d < 128 {
        d << 1
    } else {
        (255u8.wrapping_sub(d) << 1).wrapping_add(1)
    }
}

/// One scanline as RLE segments: runs of more than three equal values become a run after
/// the raw value they repeat; shorter repeats stay raw.
fn scanline(line: &[u8], raw: &mut Vec<u8>, out: &mut Vec<u8>) {
    let Some((&first, rest)) = line.split_first() else {
        return;
    };
    raw.clear();
    raw.push(first);
    let (mut last, mut count) = (first, 0usize);
    for &b in rest {
        if b == last {
            count += 1;
            continue;
        }
        match count {
            3.. => {
                segment(raw, count, out);
                raw.clear();
            }
            2 => raw.extend_from_slice(&[last, last]),
            1 => raw.push(last),
            _ => {}
        }
        raw.push(b);
        last = b;
        count = 0;
    }
    if count < 3 {
        raw.extend(std::iter::repeat_n(last, count));
        count = 0;
    }
    segment(raw, count, out);
}

/// Raw values (at least one) followed by `run` repeats of the last of them.
fn segment(mut raw: &[u8], run: usize, out: &mut Vec<u8>) {
    while raw.len() > 15 {
        out.push(15 << 4);
        out.extend_from_slice(&raw[..15]);
        raw = &raw[15..];
    }
    let last = raw[raw.len() - 1];
    out.push(((raw.len() as u8) << 4) + run.min(15) as u8);
    out.extend_from_slice(raw);
    if run > 15 {
        long_run(run - 15, last, out);
    }
}

/// A run beyond what one control byte holds: control bytes of 16 to 47 repeats (low nibble
/// 1 or 2 adds 16 or 32), then the rest.
fn long_run(mut run: usize, last: u8, out: &mut Vec<u8>) {
    while run >= 16 {
        let current = run.min(47);
        let sixteens = (current / 16).min(2);
        out.push((((current - sixteens * 16) << 4) + sixteens) as u8);
        run -= current;
    }
    match run {
        0 => {}
        1..=3 => segment(&[last; 3][..run], 0, out),
        _ => segment(&[last], run - 1, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes as ironrdp-graphics' encoder (with its header's "no alpha" bit
    /// cleared), and IronRDP's decoder reads them back.
    #[test]
    fn matches_ironrdp_graphics_and_decodes() {
        use ironrdp_graphics::rdp6::{BitmapStreamDecoder, BitmapStreamEncoder};
        let mut seed = 12345u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        };
        type Pixel = Box<dyn FnMut(usize, usize) -> [u8; 4]>;
        let cases: Vec<(usize, usize, Pixel)> = vec![
            (
                64,
                32,
                Box::new(|x, y| {
                    [
                        (x * 3) as u8,
                        (y * 7) as u8,
                        ((x / 8 + y / 8) % 2 * 200) as u8,
                        0,
                    ]
                }),
            ),
            (64, 32, Box::new(|_, _| [10, 20, 30, 0])),
            (8, 3, Box::new(move |_, _| [rand(), rand(), rand(), 0])),
            (
                100,
                2,
                Box::new(|x, _| [if x < 90 { 0x41 } else { x as u8 }, 0, 0xff, 0]),
            ),
            (4, 1, Box::new(|x, _| [x as u8, x as u8, x as u8, 0])),
        ];
        let mut ours = PlanarEncoder::default();
        for (w, h, mut pixel) in cases {
            let rows: Vec<Vec<u8>> = (0..h)
                .map(|y| (0..w).flat_map(|x| pixel(x, y)).collect())
                .collect();
            let mut mine = Vec::new();
            ours.encode(w, h, true, |y| &rows[y], &mut mine);

            let bottom_up: Vec<&[u8]> = rows.iter().rev().map(|r| r.as_slice()).collect();
            let px = || bottom_up.iter().flat_map(|r| r.chunks_exact(4));
            let mut theirs = vec![0u8; w * h * 8 + 64];
            let len = BitmapStreamEncoder::new(w, h)
                .encode_channels_stream_alpha(
                    (
                        px().map(|p| p[2]),
                        px().map(|p| p[1]),
                        px().map(|p| p[0]),
                        std::iter::repeat_n(0xffu8, w * h),
                    ),
                    &mut theirs,
                    true,
                )
                .unwrap();
            theirs[0] &= !0x20;
            assert_eq!(mine, &theirs[..len], "{w}x{h}");

            let mut rgb = Vec::new();
            BitmapStreamDecoder::default()
                .decode_bitmap_stream_to_rgb24(&mine, &mut rgb, w, h)
                .unwrap();
            for (i, p) in rgb.chunks_exact(3).enumerate() {
                let (x, y) = (i % w, h - 1 - i / w);
                let src = &rows[y][x * 4..x * 4 + 3];
                assert_eq!(p, [src[2], src[1], src[0]], "{w}x{h} pixel ({x}, {y})");
            }
        }
    }

    /// The graphics pipeline's form: no alpha plane, rows top-down (IronRDP's decoder keeps
    /// the stream's row order).
    #[test]
    fn top_down_streams_have_no_alpha_and_decode_upright() {
        use ironrdp_graphics::rdp6::BitmapStreamDecoder;
        let (w, h) = (37usize, 11usize);
        let rows: Vec<Vec<u8>> = (0..h)
            .map(|y| {
                (0..w)
                    .flat_map(|x| [(x * 7) as u8, (y * 20) as u8, ((x + y) % 3 * 90) as u8, 0])
                    .collect()
            })
            .collect();
        let mut stream = Vec::new();
        PlanarEncoder::default().encode_top_down(w, h, |y| &rows[y], &mut stream);
        assert_eq!(stream[0], 0x30, "RLE, no alpha");
        let mut rgb = Vec::new();
        BitmapStreamDecoder::default()
            .decode_bitmap_stream_to_rgb24(&stream, &mut rgb, w, h)
            .unwrap();
        for (i, p) in rgb.chunks_exact(3).enumerate() {
            let (x, y) = (i % w, i / w);
            let src = &rows[y][x * 4..x * 4 + 3];
            assert_eq!(p, [src[2], src[1], src[0]], "pixel ({x}, {y})");
        }
    }
}
