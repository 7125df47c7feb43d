//! Interleaved RLE bitmap streams (MS-RDPBCGR 2.2.9.1.1.3.1.2.4, the RDP 4.0/5.0 bitmap
//! compression) at 24, 16 and 15 bits per pixel.
//!
//! The codec codes each pixel against the one above it: a *background run* repeats the row
//! above, a *foreground run* is the row above XORed with one colour, a *foreground/background
//! image* says per pixel (one bit) which of the two it is. Text on a flat background — a
//! glyph's rows differ from the rows above only where its strokes start and end — costs
//! about one bit a pixel, where planar codes three colour planes of the same shapes. Flat
//! runs and literal pixels cover the rest.
//!
//! Clients that decode bitmaps of any depth in a 32-bit session (those announcing bitmap
//! codecs: FreeRDP, IronRDP, mstsc) get it at 24 bits where it is smaller than planar (the
//! text of the heavy workload: `benches/replay.rs`). Sessions below 32 bits get it at their
//! depth instead of raw tiles; every client decodes it there. (The server announces 32 bits
//! and the clients tested, rdesktop included, take that, so those sessions are rare.)
//!
//! The encoder is greedy: at each pixel it takes the order that saves the most bytes over
//! literal pixels, if that saves enough. Two rules of the decoders shape it (FreeRDP's
//! `interleaved.c`, ironrdp-graphics' `rle.rs`, rdesktop's `bitmap.c` agree):
//! - an order that starts on the first row is decoded as a first-row order throughout (the
//!   row above counts as black), so no order runs from the first row into the second;
//! - a background run right after another background run starts with one foreground pixel,
//!   so two background runs never follow each other.

/// Order codes (the regular form keeps the length in the low 5 bits, the lite form in the
/// low 4, the mega-mega form in the two bytes that follow).
const BG_RUN: u8 = 0x0;
const FG_RUN: u8 = 0x1;
const FGBG_IMAGE: u8 = 0x2;
const COLOR_RUN: u8 = 0x3;
const COLOR_IMAGE: u8 = 0x4;
const LITE_SET_FG_FG_RUN: u8 = 0xc;
const LITE_SET_FG_FGBG_IMAGE: u8 = 0xd;
const MEGA_MEGA_SET_FG_RUN: u8 = 0xf6;
const MEGA_MEGA_SET_FGBG_IMAGE: u8 = 0xf7;

/// A foreground/background image ends before this many pixels in a row like the row above.
const FGBG_BREAK: usize = 24;

/// The longest run one order carries.
const MAX_RUN: usize = 0xffff;

/// An order is taken over literal pixels only when it saves at least this many bytes (an
/// order inside a run of literal pixels also costs the literal run a second header).
const MIN_SAVING: isize = 3;

/// Appends the stream of a `width`-pixel-wide bitmap to `out`. `pixels` are its pixel values
/// bottom-up (the first row is the bitmap's bottom one), each in the low `bytes_per_pixel`
/// (2 or 3) bytes as the wire carries them: `0xRRGGBB` at 24 bits, the 16- or 15-bit value
/// otherwise.
pub fn encode(pixels: &[u32], width: usize, bytes_per_pixel: usize, out: &mut Vec<u8>) {
    debug_assert!(matches!(bytes_per_pixel, 2 | 3));
    if width == 0 {
        return;
    }
    Encoder {
        px: pixels,
        width,
        bpp: bytes_per_pixel,
        out,
        fg: None,
        after_bg: false,
        literal: None,
    }
    .run();
}

struct Encoder<'a> {
    px: &'a [u32],
    width: usize,
    bpp: usize,
    out: &'a mut Vec<u8>,
    /// The decoder's foreground colour, once an order has set it (its initial value differs
    /// between decoders at 15 bits, so it is always set before use).
    fg: Option<u32>,
    /// The last order written was a background run.
    after_bg: bool,
    /// Where the literal pixels not written yet start.
    literal: Option<usize>,
}

/// What the greedy step found best at a pixel.
#[derive(Debug, Clone, Copy)]
enum Choice {
    Bg(usize),
    Fg(u32, usize),
    Color(usize),
    FgBg(u32, usize),
}

impl Encoder<'_> {
    fn above(&self, i: usize) -> u32 {
        if i < self.width {
            0
        } else {
            self.px[i - self.width]
        }
    }

    fn run(&mut self) {
        let n = self.px.len();
        let mut i = 0;
        while i < n {
            // No order crosses the end of the first row.
            let limit = if i < self.width { self.width } else { n };
            let end = limit.min(i + MAX_RUN);
            match self.best(i, end) {
                Some(choice) => {
                    self.flush_literal(i);
                    i += self.write(choice, i);
                }
                None => {
                    self.literal.get_or_insert(i);
                    i += 1;
                    if i == self.width || self.literal.is_some_and(|s| i - s == MAX_RUN) {
                        self.flush_literal(i);
                    }
                }
            }
        }
        self.flush_literal(n);
    }

    /// The order that saves the most over literal pixels at `i` (ending before `end`), if
    /// one saves enough.
    fn best(&self, i: usize, end: usize) -> Option<Choice> {
        let bpp = self.bpp as isize;
        let px = self.px;
        let count = |f: &dyn Fn(usize) -> bool| (i..end).take_while(|&j| f(j)).count();
        let set_cost = |fg: u32| if self.fg == Some(fg) { 0 } else { bpp };
        let mut best: Option<(isize, Choice)> = None;
        let mut consider = |saving: isize, choice: Choice| {
            if saving >= MIN_SAVING && best.is_none_or(|(s, _)| saving > s) {
                best = Some((saving, choice));
            }
        };
        let delta = px[i] ^ self.above(i);
        if delta == 0 && !self.after_bg {
            let len = count(&|j| px[j] == self.above(j));
            consider(
                bpp * len as isize - header_len(len, 31) as isize,
                Choice::Bg(len),
            );
        }
        if delta != 0 {
            let len = count(&|j| px[j] ^ self.above(j) == delta);
            let header = if self.fg == Some(delta) {
                header_len(len, 31)
            } else {
                header_len(len, 15)
            };
            consider(
                bpp * len as isize - header as isize - set_cost(delta),
                Choice::Fg(delta, len),
            );
        }
        let color = px[i];
        let len = count(&|j| px[j] == color);
        consider(
            bpp * (len as isize - 1) - header_len(len, 31) as isize,
            Choice::Color(len),
        );
        // A foreground/background image with the first foreground colour within 8 pixels
        // (the current one if none differs there).
        let fg = (i..end.min(i + 8))
            .map(|j| px[j] ^ self.above(j))
            .find(|&d| d != 0)
            .or(self.fg);
        if let Some(fg) = fg {
            // Up to a long stretch like the row above: a background run codes that better.
            let (mut len, mut same) = (0, 0);
            for d in (i..end).map(|j| px[j] ^ self.above(j)) {
                if d == 0 {
                    same += 1;
                    if same == FGBG_BREAK && len + 1 > same {
                        len = len + 1 - same;
                        break;
                    }
                } else if d == fg {
                    same = 0;
                } else {
                    break;
                }
                len += 1;
            }
            if len > 0 {
                let header = fgbg_header_len(len, self.fg == Some(fg));
                consider(
                    bpp * len as isize - (header + len.div_ceil(8)) as isize - set_cost(fg),
                    Choice::FgBg(fg, len),
                );
            }
        }
        best.map(|(_, choice)| choice)
    }

    /// Writes `choice` at `i`; returns the pixels it covers.
    fn write(&mut self, choice: Choice, i: usize) -> usize {
        self.after_bg = matches!(choice, Choice::Bg(_));
        match choice {
            Choice::Bg(len) => {
                regular(self.out, BG_RUN, len);
                len
            }
            Choice::Fg(fg, len) => {
                if self.fg == Some(fg) {
                    regular(self.out, FG_RUN, len);
                } else {
                    lite(self.out, LITE_SET_FG_FG_RUN, MEGA_MEGA_SET_FG_RUN, len);
                    self.pixel(fg);
                    self.fg = Some(fg);
                }
                len
            }
            Choice::Color(len) => {
                regular(self.out, COLOR_RUN, len);
                self.pixel(self.px[i]);
                len
            }
            Choice::FgBg(fg, len) => {
                if self.fg == Some(fg) {
                    fgbg_header(self.out, false, len);
                } else {
                    fgbg_header(self.out, true, len);
                    self.pixel(fg);
                    self.fg = Some(fg);
                }
                for start in (i..i + len).step_by(8) {
                    let mask = (start..(start + 8).min(i + len))
                        .enumerate()
                        .filter(|&(_, j)| self.px[j] != self.above(j))
                        .fold(0u8, |m, (bit, _)| m | 1 << bit);
                    self.out.push(mask);
                }
                len
            }
        }
    }

    /// Writes the literal pixels from where they start up to `end` as a color image.
    fn flush_literal(&mut self, end: usize) {
        let Some(start) = self.literal.take() else {
            return;
        };
        if end > start {
            regular(self.out, COLOR_IMAGE, end - start);
            for j in start..end {
                self.pixel(self.px[j]);
            }
            self.after_bg = false;
        }
    }

    fn pixel(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes()[..self.bpp]);
    }
}

/// The header bytes of a run of `len` in the regular (`short` = 31) or lite (15) form.
fn header_len(len: usize, short: usize) -> usize {
    if len <= short {
        1
    } else if len <= short + 1 + 255 {
        2
    } else {
        3
    }
}

/// The header bytes of a foreground/background image of `len` pixels (plus the colour, not
/// counted here, when it sets one: the lite form).
fn fgbg_header_len(len: usize, regular: bool) -> usize {
    let short = if regular { 31 } else { 15 };
    if len.is_multiple_of(8) && len / 8 <= short {
        1
    } else if len <= 256 {
        2
    } else {
        3
    }
}

/// A regular order (`code` 0-4) of `len` (1 to [`MAX_RUN`]).
fn regular(out: &mut Vec<u8>, code: u8, len: usize) {
    if len <= 31 {
        out.push(code << 5 | len as u8);
    } else if len <= 32 + 255 {
        out.extend_from_slice(&[code << 5, (len - 32) as u8]);
    } else {
        out.push(0xf0 | code);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

/// A lite order (`code` 0xc-0xe) of `len`, or its mega-mega form `mega`.
fn lite(out: &mut Vec<u8>, code: u8, mega: u8, len: usize) {
    if len <= 15 {
        out.push(code << 4 | len as u8);
    } else if len <= 16 + 255 {
        out.extend_from_slice(&[code << 4, (len - 16) as u8]);
    } else {
        out.push(mega);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

/// The header of a foreground/background image of `len` pixels; `set_fg`: the lite form that
/// sets the colour (which the caller writes next).
fn fgbg_header(out: &mut Vec<u8>, set_fg: bool, len: usize) {
    let (code, short, mega) = if set_fg {
        (LITE_SET_FG_FGBG_IMAGE << 4, 15, MEGA_MEGA_SET_FGBG_IMAGE)
    } else {
        (FGBG_IMAGE << 5, 31, 0xf0 | FGBG_IMAGE)
    };
    if len.is_multiple_of(8) && len / 8 <= short {
        out.push(code | (len / 8) as u8);
    } else if len <= 256 {
        out.extend_from_slice(&[code, (len - 1) as u8]);
    } else {
        out.push(mega);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use deskport_testsupport::workload::Rng;

    /// Decodes with ironrdp-graphics' decoder (a port of FreeRDP's) and compares.
    fn round_trip(pixels: &[u32], width: usize, bytes_per_pixel: usize) -> usize {
        let mut stream = Vec::new();
        encode(pixels, width, bytes_per_pixel, &mut stream);
        let height = pixels.len() / width;
        let bpp = if bytes_per_pixel == 3 { 24 } else { 16 };
        let mut decoded = Vec::new();
        ironrdp_graphics::rle::decompress(&stream, &mut decoded, width, height, bpp)
            .unwrap_or_else(|e| panic!("{width}x{height}: {e}"));
        let expected: Vec<u8> = pixels
            .iter()
            .flat_map(|p| p.to_le_bytes()[..bytes_per_pixel].to_vec())
            .collect();
        assert_eq!(decoded.len(), expected.len());
        if let Some(at) = decoded.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{width}x{height} at {bytes_per_pixel} bytes: pixel {} differs",
                at / bytes_per_pixel
            );
        }
        stream.len()
    }

    /// Text-like pictures: a flat background, strokes of one colour, some flat boxes, some
    /// noise — every order kind, at many sizes.
    fn picture(rng: &mut Rng, width: usize, height: usize, mask: u32) -> Vec<u32> {
        let background = rng.next() as u32 & mask;
        let ink = rng.next() as u32 & mask;
        let mut px = vec![background; width * height];
        for _ in 0..rng.next() % 20 {
            let (x, y) = (rng.next() as usize % width, rng.next() as usize % height);
            let (w, h) = (1 + rng.next() as usize % 12, 1 + rng.next() as usize % 12);
            let kind = rng.next() % 4;
            let box_colour = rng.next() as u32 & mask;
            for yy in y..(y + h).min(height) {
                for xx in x..(x + w).min(width) {
                    px[yy * width + xx] = match kind {
                        0 => ink,
                        1 => box_colour,
                        2 => rng.next() as u32 & mask,
                        _ if (xx + yy) % 2 == 0 => ink,
                        _ => background,
                    };
                }
            }
        }
        px
    }

    #[test]
    fn streams_decode_to_the_pixels() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..400 {
            let width = 1 + rng.next() as usize % 70;
            let height = 1 + rng.next() as usize % 40;
            for (bytes, mask) in [(3, 0xff_ffff), (2, 0xffff)] {
                let px = picture(&mut rng, width, height, mask);
                round_trip(&px, width, bytes);
                // The same with few colours, so runs meet at every offset.
                let few: Vec<u32> = px.iter().map(|p| p & 0x01_0101 & mask).collect();
                round_trip(&few, width, bytes);
            }
        }
    }

    #[test]
    fn long_runs_and_edge_cases_decode() {
        // One colour, long enough for the mega-mega forms; a single pixel; a single row; a
        // single column; black (the first row's background); white.
        for (w, h, colour) in [
            (512, 256, 0x1e_2430),
            (1, 1, 0x12_3456),
            (300, 1, 0),
            (1, 300, 0xff_ffff),
            (8, 8, 0),
        ] {
            round_trip(&vec![colour; w * h], w, 3);
        }
        // Alternating rows and columns, background runs longer than 287 after one another.
        let w = 400;
        let px: Vec<u32> = (0..w * 6)
            .map(|i| if (i / w) % 3 == 0 { 0xff } else { 0 })
            .collect();
        round_trip(&px, w, 3);
        // Noise: literal pixels, longer than 287.
        let mut rng = Rng(7);
        let noise: Vec<u32> = (0..640 * 4)
            .map(|_| rng.next() as u32 & 0xff_ffff)
            .collect();
        let len = round_trip(&noise, 640, 3);
        assert!(
            len <= 640 * 4 * 3 + 64,
            "noise grows by {}",
            len - 640 * 4 * 3
        );
    }

    #[test]
    fn text_costs_about_a_bit_a_pixel() {
        // Glyph-like strokes: rows of a 6x13 font, dark on a flat colour.
        let (w, h) = (48, 13);
        let mut rng = Rng(11);
        let px: Vec<u32> = (0..w * h)
            .map(|_| {
                if rng.next().is_multiple_of(4) {
                    0x10_1010
                } else {
                    0xd9_4f3d
                }
            })
            .collect();
        let len = round_trip(&px, w, 3);
        // Literal pixels would be 1,872 bytes; a bit a pixel about 80.
        assert!(len < 200, "{len} bytes for {w}x{h} of text");
    }
}
