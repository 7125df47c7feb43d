//! Screen updates on the wire: which tiles changed, and the fast-path Bitmap Update PDUs that
//! carry them (MS-RDPBCGR 2.2.9.1.2.1.2).
//!
//! This first encoder sends *uncompressed* bitmaps at the session's colour depth (15, 16, 24
//! or 32 bits), which every client decodes (rdesktop included). Compressed codecs come with
//! the fast desktop path.

use ironrdp_core::{Encode as _, WriteCursor};
use ironrdp_pdu::bitmap::{BitmapData, BitmapUpdateData, Compression};
use ironrdp_pdu::fast_path::{
    EncryptionFlags, FastPathHeader, FastPathUpdatePdu, Fragmentation, UpdateCode,
};
use ironrdp_pdu::geometry::InclusiveRectangle;

use crate::desktop::Frame;

/// Tile width of the change detection and of the update rectangles.
pub const TILE_WIDTH: u16 = 64;

/// Update data per fast-path PDU at most (its length field has 15 bits; stay well below).
const MAX_PDU_DATA: usize = 15 * 1024;

/// A rectangle of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

/// Encodes rectangles of captured frames for one session.
#[derive(Debug, Clone, Copy)]
pub struct RawEncoder {
    bpp: u16,
}

impl RawEncoder {
    /// For a session at `bpp` bits per pixel (8 is not supported: sent as 16).
    pub fn new(bpp: u16) -> Self {
        let bpp = match bpp {
            15 | 16 | 24 | 32 => bpp,
            _ => 16,
        };
        Self { bpp }
    }

    pub fn bpp(&self) -> u16 {
        self.bpp
    }

    fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bpp.div_ceil(8))
    }

    /// Tile height such that one uncompressed tile stays near 8 KiB.
    pub fn tile_height(&self) -> u16 {
        (8192 / (usize::from(TILE_WIDTH) * self.bytes_per_pixel())) as u16
    }

    /// The tiles of `current` that differ from `previous` (all of them without a previous frame,
    /// or when the size changed).
    pub fn changed_tiles(&self, previous: Option<&Frame>, current: &Frame) -> Vec<Rect> {
        let th = self.tile_height();
        let (w, h) = (current.width, current.height);
        let stride = current.stride();
        let same_size = previous.is_some_and(|p| p.width == w && p.height == h);
        let mut rects = Vec::new();
        let mut y = 0;
        while y < h {
            let height = th.min(h - y);
            let mut x = 0;
            while x < w {
                let width = TILE_WIDTH.min(w - x);
                let changed = match previous {
                    Some(p) if same_size => (y..y + height).any(|row| {
                        let start = usize::from(row) * stride + usize::from(x) * 4;
                        let end = start + usize::from(width) * 4;
                        p.data[start..end] != current.data[start..end]
                    }),
                    _ => true,
                };
                if changed {
                    rects.push(Rect {
                        x,
                        y,
                        width,
                        height,
                    });
                }
                x += width;
            }
            y += height;
        }
        rects
    }

    /// The pixels of `rect`, bottom-up, converted to the session depth, rows padded to 4 bytes.
    fn pixels(&self, frame: &Frame, rect: Rect) -> Vec<u8> {
        let bpp = self.bytes_per_pixel();
        let row_len = (usize::from(rect.width) * bpp).div_ceil(4) * 4;
        let mut out = Vec::with_capacity(row_len * usize::from(rect.height));
        let stride = frame.stride();
        for row in (rect.y..rect.y + rect.height).rev() {
            let start = usize::from(row) * stride + usize::from(rect.x) * 4;
            let src = &frame.data[start..start + usize::from(rect.width) * 4];
            let before = out.len();
            match self.bpp {
                32 => out.extend_from_slice(src),
                24 => src
                    .chunks_exact(4)
                    .for_each(|p| out.extend_from_slice(&p[..3])),
                16 => src.chunks_exact(4).for_each(|p| {
                    let v = (u16::from(p[2] >> 3) << 11)
                        | (u16::from(p[1] >> 2) << 5)
                        | u16::from(p[0] >> 3);
                    out.extend_from_slice(&v.to_le_bytes());
                }),
                _ => src.chunks_exact(4).for_each(|p| {
                    let v = (u16::from(p[2] >> 3) << 10)
                        | (u16::from(p[1] >> 3) << 5)
                        | u16::from(p[0] >> 3);
                    out.extend_from_slice(&v.to_le_bytes());
                }),
            }
            out.resize(before + row_len, 0);
        }
        out
    }

    /// Fast-path Bitmap Update PDUs for `rects` of `frame`, appended to `out`.
    pub fn encode(&self, frame: &Frame, rects: &[Rect], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut batch: Vec<(Rect, Vec<u8>)> = Vec::new();
        let mut batch_len = 0;
        for rect in rects {
            let pixels = self.pixels(frame, *rect);
            if batch_len + pixels.len() + 32 > MAX_PDU_DATA && !batch.is_empty() {
                self.flush(&batch, out)?;
                batch.clear();
                batch_len = 0;
            }
            batch_len += pixels.len() + 32;
            batch.push((*rect, pixels));
        }
        if !batch.is_empty() {
            self.flush(&batch, out)?;
        }
        Ok(())
    }

    fn flush(&self, batch: &[(Rect, Vec<u8>)], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let rectangles = batch
            .iter()
            .map(|(r, pixels)| BitmapData {
                rectangle: InclusiveRectangle {
                    left: r.x,
                    top: r.y,
                    right: r.x + r.width - 1,
                    bottom: r.y + r.height - 1,
                },
                width: r.width,
                height: r.height,
                bits_per_pixel: self.bpp,
                compression_flags: Compression::empty(),
                compressed_data_header: None,
                bitmap_data: pixels,
            })
            .collect();
        let body = ironrdp_core::encode_vec(&BitmapUpdateData { rectangles })
            .map_err(|e| anyhow::anyhow!("encode a bitmap update: {e}"))?;
        let update = FastPathUpdatePdu {
            fragmentation: Fragmentation::Single,
            update_code: UpdateCode::Bitmap,
            compression_flags: None,
            compression_type: None,
            data: &body,
        };
        let header = FastPathHeader::new(EncryptionFlags::empty(), update.size());
        let start = out.len();
        out.resize(start + header.size() + update.size(), 0);
        let mut cursor = WriteCursor::new(&mut out[start..]);
        header
            .encode(&mut cursor)
            .map_err(|e| anyhow::anyhow!("encode a fast-path header: {e}"))?;
        update
            .encode(&mut cursor)
            .map_err(|e| anyhow::anyhow!("encode a fast-path update: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn frame(w: u16, h: u16, fill: u8) -> Frame {
        Frame {
            width: w,
            height: h,
            data: Arc::new(vec![fill; usize::from(w) * usize::from(h) * 4]),
        }
    }

    #[test]
    fn only_changed_tiles_are_found() {
        let e = RawEncoder::new(32);
        let a = frame(200, 70, 0);
        assert_eq!(e.changed_tiles(None, &a).len(), 4 * 3);
        assert!(e.changed_tiles(Some(&a), &a).is_empty());
        let mut data = (*a.data).clone();
        // One pixel at (130, 40): the tile at x 128, second row of tiles (height 32).
        data[(40 * 200 + 130) * 4] = 9;
        let b = Frame {
            data: Arc::new(data),
            ..a.clone()
        };
        assert_eq!(
            e.changed_tiles(Some(&a), &b),
            vec![Rect {
                x: 128,
                y: 32,
                width: 64,
                height: 32
            }]
        );
    }

    #[test]
    fn pixels_convert_and_pad() {
        let mut f = frame(3, 1, 0);
        Arc::make_mut(&mut f.data)
            .copy_from_slice(&[0x10, 0x20, 0x30, 0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
        let r = Rect {
            x: 0,
            y: 0,
            width: 3,
            height: 1,
        };
        assert_eq!(
            RawEncoder::new(24).pixels(&f, r),
            vec![0x10, 0x20, 0x30, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]
        );
        let p16 = RawEncoder::new(16).pixels(&f, r);
        assert_eq!(p16.len(), 8);
        assert_eq!(u16::from_le_bytes([p16[2], p16[3]]), 0xffff);
        let mut out = Vec::new();
        RawEncoder::new(32).encode(&f, &[r], &mut out).unwrap();
        // A fast-path output header (action 0) with the PDU's length.
        assert_eq!(out[0] & 0x03, 0);
    }
}
