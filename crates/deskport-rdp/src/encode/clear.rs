//! ClearCodec bitmap streams (MS-RDPEGFX 2.2.4.1) for the graphics pipeline, with one RLEX
//! subcodec (2.2.4.1.1.3.1.1) covering the whole area: a palette of up to 127 colours and
//! runs of them. Text on a flat colour — two or three colours, a few runs a row — costs
//! about half of what planar does (three colour planes of the same shapes), before ZGFX;
//! areas of more colours stay planar. (The graphics pipeline has no interleaved RLE, which
//! the classic path uses for the same pixels.)
//!
//! Each stream carries a sequence number that the client checks: 0 after the graphics are
//! reset, then one more per stream (FreeRDP refuses a stream out of sequence), so a stream
//! encoded must be sent, and [`ClearEncoder::reset`] goes with every Reset Graphics.

/// subCodecId of RLEX.
const RLEX: u8 = 2;

/// Colours an RLEX palette holds at most.
const MAX_PALETTE: usize = 127;

/// The ClearCodec state of one graphics pipeline: the next sequence number.
#[derive(Debug, Default)]
pub struct ClearEncoder {
    seq: u8,
}

impl ClearEncoder {
    /// The client reset its graphics (Reset Graphics): sequence numbers start again at 0.
    pub fn reset(&mut self) {
        self.seq = 0;
    }

    /// Appends the stream of a `width`x`height` area to `out` if its pixels have at most 127
    /// colours and the stream is shorter than `limit`; returns whether it did (and used a
    /// sequence number). `row(y)` gives the area's top-down row `y` as `[b, g, r, x]` pixels.
    pub fn encode<'a>(
        &mut self,
        width: usize,
        height: usize,
        row: impl Fn(usize) -> &'a [u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        if width == 0 || height == 0 || width > 0xffff || height > 0xffff {
            return false;
        }
        // Runs of one colour, in raster order, and the palette (in order of appearance).
        let mut palette: Vec<[u8; 3]> = Vec::new();
        let mut runs: Vec<(u8, u32)> = Vec::new();
        for y in 0..height {
            for px in row(y)[..width * 4].chunks_exact(4) {
                let colour = [px[0], px[1], px[2]];
                if let Some(last) = runs.last_mut() {
                    if palette[usize::from(last.0)] == colour {
                        last.1 += 1;
                        continue;
                    }
                }
                let index = match palette.iter().position(|&c| c == colour) {
                    Some(i) => i,
                    None if palette.len() < MAX_PALETTE => {
                        palette.push(colour);
                        palette.len() - 1
                    }
                    None => return false,
                };
                runs.push((index as u8, 1));
            }
        }
        let start = out.len();
        out.push(0); // glyphFlags: no glyph
        out.push(self.seq);
        // The composite payload: no residual layer, no bands, the subcodec layer.
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let subcodec_len_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        let subcodec_start = out.len();
        out.extend_from_slice(&0u16.to_le_bytes()); // xStart
        out.extend_from_slice(&0u16.to_le_bytes()); // yStart
        out.extend_from_slice(&(width as u16).to_le_bytes());
        out.extend_from_slice(&(height as u16).to_le_bytes());
        let data_len_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(RLEX);
        let data_start = out.len();
        out.push(palette.len() as u8);
        for colour in &palette {
            out.extend_from_slice(colour);
        }
        // A segment: a run of its start colour, then the colours from start to stop one
        // pixel each ("suite"). Each run here is one segment with a suite of one pixel (its
        // last); a run followed by one pixel of the next palette entry takes that in its
        // suite too.
        let bits = stop_index_bits(palette.len());
        let mut i = 0;
        while i < runs.len() {
            if out.len() - start >= limit {
                out.truncate(start);
                return false;
            }
            let (index, len) = runs[i];
            let next_in_suite = runs
                .get(i + 1)
                .is_some_and(|&(next, n)| n == 1 && next == index + 1);
            let (stop, depth) = if next_in_suite {
                i += 2;
                (index + 1, 1u8)
            } else {
                i += 1;
                (index, 0u8)
            };
            // (At most 127 colours: the stop index has at most 7 bits.)
            out.push(stop | depth << bits);
            push_run_length(out, len - 1);
        }
        // Decoders refuse subcodec data larger than the area's pixels at 3 bytes (ironrdp's;
        // raw pixels would be smaller then anyway).
        if out.len() - start >= limit || out.len() - data_start > width * height * 3 {
            out.truncate(start);
            return false;
        }
        let data_len = (out.len() - data_start) as u32;
        out[data_len_at..data_len_at + 4].copy_from_slice(&data_len.to_le_bytes());
        let subcodec_len = (out.len() - subcodec_start) as u32;
        out[subcodec_len_at..subcodec_len_at + 4].copy_from_slice(&subcodec_len.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        true
    }
}

/// Bits of a segment's stopIndex for a palette of `count` colours: floor(log2(count - 1))
/// + 1, and 1 for a single colour (as FreeRDP reads it).
fn stop_index_bits(count: usize) -> u8 {
    if count <= 1 {
        1
    } else {
        (usize::BITS - (count - 1).leading_zeros()) as u8
    }
}

/// runLengthFactor: one byte below 255, else 0xff and two bytes below 65535, else 0xff,
/// 0xffff and four bytes.
fn push_run_length(out: &mut Vec<u8>, run: u32) {
    if run < 0xff {
        out.push(run as u8);
    } else if run < 0xffff {
        out.push(0xff);
        out.extend_from_slice(&(run as u16).to_le_bytes());
    } else {
        out.push(0xff);
        out.extend_from_slice(&0xffffu16.to_le_bytes());
        out.extend_from_slice(&run.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use deskport_testsupport::workload::Rng;
    use ironrdp_graphics::clearcodec::ClearCodecDecoder;

    /// Encodes `pixels` (`B, G, R, X` rows of `width`) and decodes with ironrdp-graphics'
    /// decoder: the stream's length, or `None` if it was not encoded.
    fn round_trip(
        encoder: &mut ClearEncoder,
        decoder: &mut ClearCodecDecoder,
        pixels: &[u8],
        width: usize,
    ) -> Option<usize> {
        let height = pixels.len() / 4 / width;
        let mut out = Vec::new();
        let row = |y: usize| &pixels[y * width * 4..(y + 1) * width * 4];
        if !encoder.encode(width, height, row, usize::MAX, &mut out) {
            return None;
        }
        let decoded = decoder
            .decode(&out, width as u16, height as u16)
            .unwrap_or_else(|e| panic!("{width}x{height}: {e}"));
        for (i, (a, b)) in decoded
            .chunks_exact(4)
            .zip(pixels.chunks_exact(4))
            .enumerate()
        {
            assert_eq!(a[..3], b[..3], "{width}x{height}: pixel {i}");
        }
        Some(out.len())
    }

    fn picture(rng: &mut Rng, width: usize, height: usize, colours: u64) -> Vec<u8> {
        let palette: Vec<[u8; 3]> = (0..colours)
            .map(|_| {
                let v = rng.next().to_le_bytes();
                [v[0], v[1], v[2]]
            })
            .collect();
        let mut px = Vec::with_capacity(width * height * 4);
        let mut current = 0;
        for _ in 0..width * height {
            if rng.next().is_multiple_of(5) {
                current = (rng.next() % colours) as usize;
            }
            px.extend_from_slice(&palette[current]);
            px.push(0);
        }
        px
    }

    #[test]
    fn streams_decode_to_the_pixels_and_number_themselves() {
        let mut rng = Rng(0x00c1_ea12);
        let (mut encoder, mut decoder) = (ClearEncoder::default(), ClearCodecDecoder::new());
        for colours in [1, 2, 3, 4, 16, 127] {
            for _ in 0..20 {
                let (w, h) = (1 + rng.next() as usize % 90, 1 + rng.next() as usize % 40);
                assert!(round_trip(
                    &mut encoder,
                    &mut decoder,
                    &picture(&mut rng, w, h, colours),
                    w
                )
                .is_some());
            }
        }
        // Runs longer than 254 and 65534 pixels.
        let flat: Vec<u8> = [0x30, 0x24, 0x1e, 0].repeat(512 * 256);
        assert!(round_trip(&mut encoder, &mut decoder, &flat, 512).unwrap() < 64);
        let stripes: Vec<u8> = (0..600 * 2)
            .flat_map(|i| if i < 600 { [1, 2, 3, 0] } else { [9, 8, 7, 0] })
            .collect();
        round_trip(&mut encoder, &mut decoder, &stripes, 300);
        assert_eq!(encoder.seq, 122, "one sequence number per stream");
        // 128 colours: not RLEX, and no sequence number used.
        let many: Vec<u8> = (0..128u8).flat_map(|i| [i, 0, 0, 0]).collect();
        assert_eq!(round_trip(&mut encoder, &mut decoder, &many, 128), None);
        assert_eq!(encoder.seq, 122);
        encoder.reset();
        assert_eq!(encoder.seq, 0);
    }

    #[test]
    fn tiny_areas_are_left_to_other_codecs() {
        // One pixel: a palette and a segment (6 bytes) are more than its 3 bytes of colour,
        // which decoders refuse.
        let (mut encoder, mut out) = (ClearEncoder::default(), Vec::new());
        let px = [1u8, 2, 3, 0];
        assert!(!encoder.encode(1, 1, |_| &px[..], usize::MAX, &mut out));
        assert!(out.is_empty());
        assert_eq!(encoder.seq, 0);
    }

    #[test]
    fn a_stream_longer_than_the_limit_is_not_written() {
        let mut rng = Rng(5);
        let px = picture(&mut rng, 64, 32, 100);
        let row = |y: usize| &px[y * 64 * 4..(y + 1) * 64 * 4];
        let mut encoder = ClearEncoder::default();
        let mut out = vec![7];
        assert!(!encoder.encode(64, 32, row, 100, &mut out));
        assert_eq!((out, encoder.seq), (vec![7], 0));
    }
}
