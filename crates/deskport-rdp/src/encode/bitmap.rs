//! The classic screen-update path: which tiles changed, and the fast-path Bitmap Update PDUs
//! that carry them (MS-RDPBCGR 2.2.9.1.2.1.2). Every client decodes it.
//!
//! Two codecs, chosen per session:
//! - **planar** (RDP 6.0 bitmap compression, MS-RDPEGDI 2.2.2.5.1, `planar.rs`) for 32-bit
//!   sessions: the colour planes are delta- and run-length-coded, lossless; xfreerdp, mstsc,
//!   IronRDP and rdesktop (`-a 32`) decode it. A tile that would not shrink goes raw;
//! - **raw** (uncompressed) at 15, 16 and 24 bits, which every client decodes (rdesktop's
//!   default 24-bit session included), and for tiles whose width is not a multiple of 4.
//!
//! Figures behind the choice: `scripts/bench` (bench/RESULTS.md).
//!
//! Copies and fills go as drawing orders (ScrBlt, OpaqueRect, MultiOpaqueRect: [`orders`])
//! to clients that take them, in fast-path Orders updates between the bitmap updates, in the
//! order of the ops. Clients that confirmed Surface Frame Markers and Frame Acknowledge
//! (MS-RDPBCGR 2.2.9.2.3, 2.2.12.1: xfreerdp, IronRDP) get each frame between a BEGIN and an
//! END marker with its id and acknowledge the END; what is in flight is
//! [`ScreenEncoder::unacknowledged`].
//!
//! [`orders`]: super::orders

use ironrdp_bulk::{BulkCompressor, CompressionType as BulkType};
use ironrdp_pdu::bitmap::{BitmapData, BitmapUpdateData, CompressedDataHeader, Compression};
use ironrdp_pdu::fast_path::{FastPathUpdatePdu, Fragmentation, UpdateCode};
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::rdp::client_info::CompressionType;
use ironrdp_pdu::rdp::headers::CompressionFlags;
use ironrdp_pdu::surface_commands::{FrameAction, FrameMarkerPdu, SurfaceCommand};

use super::orders::{color_bytes, OrderKinds, Orders, MAX_MULTI_RECTS};
use super::planar::PlanarEncoder;
use super::rle;
use super::{pixel_value, write_update, Codec, Op, OpKinds, Rect, ScreenEncoder};
use deskport_desktop::Frame;

/// Tile width of the change detection and of the update rectangles.
pub const TILE_WIDTH: u16 = 64;

/// Update data per fast-path PDU at most (its length field has 15 bits; stay well below).
const MAX_PDU_DATA: usize = 15 * 1024;

/// One drawing order's bytes at most (a MultiOpaqueRect of 45 far-apart rectangles: 401).
const MAX_ORDER: usize = 512;

/// Damaged areas are cut into pieces of at most this size before encoding; a piece whose
/// planar stream does not fit in one PDU is halved until it does (or is sent raw at the tile
/// size). Large pieces compress far better than small tiles: every planar piece starts each
/// plane with a raw scanline, and bulk compression finds longer matches in longer planes
/// (the animation of the RDP benchmark: 0.82 kB per frame with 64x32 tiles, about 0.1 kB as
/// whole areas; see `benches/codec.rs`).
const PIECE: (u16, u16) = (512, 256);

/// `area` cut into pieces of at most `piece` from its own corner, rows of pieces top-down.
/// Widths are rounded up to a multiple of 4 (planar needs it: a few unchanged pixels more are
/// cheaper than a raw tile) where the `screen_width` leaves room.
fn cut(area: Rect, (pw, ph): (u16, u16), screen_width: u16) -> Vec<Rect> {
    let (ax, ay, aw, ah) = (area.x, area.y, area.width, area.height);
    let mut rects = Vec::new();
    let mut y = ay;
    while y < ay + ah {
        let h = ph.min(ay + ah - y);
        let mut x = ax;
        while x < ax + aw {
            let mut w = pw.min(ax + aw - x);
            let aligned = w.next_multiple_of(4);
            if aligned != w && x + aligned <= screen_width {
                w = aligned;
            }
            rects.push(Rect {
                x,
                y,
                width: w,
                height: h,
            });
            x += w;
        }
        y += h;
    }
    rects
}

/// Encodes rectangles of captured frames for one session as bitmap updates.
pub struct BitmapEncoder {
    bpp: u16,
    planar: bool,
    /// Both sides announced NO_BITMAP_COMPRESSION_HDR: compressed bitmaps go without the
    /// 8-byte header.
    no_compression_header: bool,
    /// Bulk compression of every update PDU: one history for the whole session, so PDUs are
    /// compressed in the order they are sent.
    bulk: Option<(BulkCompressor, CompressionType)>,
    planar_encoder: PlanarEncoder,
    /// Tiles may go as interleaved RLE at this depth (the session's below 32 bits; 24 in a
    /// 32-bit session whose client decodes bitmaps of other depths), where that is smaller.
    rle_depth: Option<u16>,
    /// Planar tiles carry an alpha plane (rdesktop decodes only those); clients that know the
    /// "no alpha" flag get smaller tiles without it.
    planar_alpha: bool,
    /// Damaged areas go in pieces of up to [`PIECE`] (else in tiles).
    pieces: bool,
    /// The drawing orders the client takes: copies and fills go as orders where it does.
    orders: OrderKinds,
    /// Frames are marked and acknowledged (else `None`).
    frames: Option<Frames>,
    /// The bitmaps of the frame being encoded, by coding.
    tiles: TileCount,
}

/// The bitmaps of a frame by coding, for the log.
#[derive(Debug, Default, Clone, Copy)]
struct TileCount {
    planar: u32,
    rle: u32,
    raw: u32,
}

/// The frames of a session whose client acknowledges them: ids of the last one sent and of
/// the last one acknowledged (ids grow by one from 1).
#[derive(Debug, Default, Clone, Copy)]
struct Frames {
    sent: u32,
    acknowledged: u32,
}

/// The orders of a frame, for the log.
#[derive(Debug, Default)]
struct OrderCount {
    scr_blt: u32,
    opaque_rect: u32,
    multi_opaque_rect: u32,
}

impl std::fmt::Debug for BitmapEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitmapEncoder")
            .field("bpp", &self.bpp)
            .field("planar", &self.planar)
            .field("bulk", &self.bulk.as_ref().map(|b| b.1))
            .field("orders", &self.orders)
            .field("frames", &self.frames)
            .finish()
    }
}

impl BitmapEncoder {
    /// For a session at `bpp` bits per pixel (8 is not supported: sent as 16).
    /// `no_compression_header`: the client's General capability has NO_BITMAP_COMPRESSION_HDR
    /// (the server's always has).
    pub fn new(bpp: u16, codec: Codec, no_compression_header: bool) -> Self {
        let bpp = match bpp {
            15 | 16 | 24 | 32 => bpp,
            _ => 16,
        };
        Self {
            bpp,
            planar: bpp == 32 && codec == Codec::Auto,
            no_compression_header,
            bulk: None,
            planar_encoder: PlanarEncoder::default(),
            rle_depth: (bpp != 32 && codec == Codec::Auto).then_some(bpp),
            planar_alpha: true,
            pieces: true,
            orders: OrderKinds::default(),
            frames: None,
            tiles: TileCount::default(),
        }
    }

    /// Copies and fills as the drawing orders of `orders` (what the client's Order capability
    /// set supports); the rest as bitmaps.
    pub fn with_orders(mut self, orders: OrderKinds) -> Self {
        self.orders = orders;
        self
    }

    /// In a 32-bit session, tiles also as 24-bit interleaved RLE where that is smaller than
    /// planar (text on a flat background: about a bit a pixel), for a client that decodes
    /// bitmaps of another depth than the session's (`mixed`: FreeRDP, IronRDP, mstsc; not
    /// rdesktop, which paints every bitmap at the session's depth).
    pub fn with_mixed_depth(mut self, mixed: bool) -> Self {
        if self.planar {
            self.rle_depth = mixed.then_some(24);
        }
        self
    }

    /// Each frame between Surface Frame Markers, for a client that acknowledges them (it
    /// confirmed the FRAME_MARKER surface command and Frame Acknowledge).
    pub fn with_frame_markers(mut self, on: bool) -> Self {
        self.frames = on.then(Frames::default);
        self
    }

    /// Damaged areas in tiles rather than larger pieces (for comparison: `benches/codec.rs`).
    pub fn with_tiles_only(mut self) -> Self {
        self.pieces = false;
        self
    }

    /// Planar tiles without the alpha plane (the "no alpha" flag) when `alpha` is false.
    pub fn with_planar_alpha(mut self, alpha: bool) -> Self {
        self.planar_alpha = alpha;
        self
    }

    /// Bulk-compresses the update PDUs with `compression` (what the client's Client Info
    /// offered), or not at all with `None`.
    ///
    /// A client that offers RDP 6.1 (XCRUSH) gets RDP 6.0 (NCRUSH): every PDU names its
    /// compression type and clients decompress the types below the one they offer too, and
    /// ironrdp-bulk 0.2's XCRUSH compressor stops compressing for good after its first PDU
    /// that does not shrink (it wipes its history and every later PDU misses it: see
    /// `tests/bulk.rs`). On the heavy workload (`benches/replay.rs`) NCRUSH sends half of what
    /// XCRUSH does (7.8 against 15.5 kB a frame), MPPC-64K 9.3.
    pub fn with_bulk_compression(mut self, compression: Option<CompressionType>) -> Self {
        self.bulk = compression.map(|t| {
            let (level, t) = match t {
                CompressionType::K8 => (BulkType::Rdp4, t),
                CompressionType::K64 => (BulkType::Rdp5, t),
                CompressionType::Rdp6 | CompressionType::Rdp61 => {
                    (BulkType::Rdp6, CompressionType::Rdp6)
                }
            };
            (BulkCompressor::new(level), t)
        });
        self
    }

    /// Whether 32-bit tiles are planar-coded.
    pub fn planar(&self) -> bool {
        self.planar
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

    /// `rect` cut into pieces of its own corner for encoding: up to [`PIECE`] for planar
    /// sessions, tiles otherwise; widths rounded up to a multiple of 4 where the
    /// `screen_width` allows.
    pub fn pieces(&self, rect: Rect, screen_width: u16) -> Vec<Rect> {
        let size = if self.planar && self.pieces {
            PIECE
        } else {
            (TILE_WIDTH, self.tile_height())
        };
        cut(rect, size, screen_width)
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
                bpp => src.chunks_exact(4).for_each(|p| {
                    let v = pixel_value(p[0], p[1], p[2], bpp);
                    out.extend_from_slice(&v.to_le_bytes()[..2]);
                }),
            }
            out.resize(before + row_len, 0);
        }
        out
    }

    /// `rect` of a 32-bit `frame` as an RDP 6.0 planar bitmap stream with RLE (alpha plane
    /// included, all opaque), if that is smaller than the raw tile.
    fn planar_tile(&mut self, frame: &Frame, rect: Rect) -> Option<Vec<u8>> {
        if !self.planar || !rect.width.is_multiple_of(4) {
            return None;
        }
        let (w, h) = (usize::from(rect.width), usize::from(rect.height));
        let stride = frame.stride();
        let raw_len = w * h * 4;
        let mut out = Vec::with_capacity(raw_len / 4);
        self.planar_encoder.encode(
            w,
            h,
            self.planar_alpha,
            |y| {
                let start = (usize::from(rect.y) + y) * stride + usize::from(rect.x) * 4;
                &frame.data[start..start + w * 4]
            },
            &mut out,
        );
        (out.len() < raw_len).then_some(out)
    }

    /// `rect` of `frame` as an interleaved RLE stream at `depth` bits, if that is smaller
    /// than `limit` bytes.
    fn rle_tile(&self, frame: &Frame, rect: Rect, depth: u16, limit: usize) -> Option<Vec<u8>> {
        let (w, h) = (usize::from(rect.width), usize::from(rect.height));
        let stride = frame.stride();
        let mut values = Vec::with_capacity(w * h);
        for row in (rect.y..rect.y + rect.height).rev() {
            let start = usize::from(row) * stride + usize::from(rect.x) * 4;
            let src = &frame.data[start..start + w * 4];
            values.extend(
                src.chunks_exact(4)
                    .map(|p| pixel_value(p[0], p[1], p[2], depth)),
            );
        }
        let mut out = Vec::with_capacity(limit.min(w * h));
        rle::encode(&values, w, usize::from(depth.div_ceil(8)), &mut out);
        (out.len() < limit).then_some(out)
    }

    /// `rect` of `frame` coded: the smaller of planar and interleaved RLE where the session
    /// has them, if smaller than raw.
    fn coded_tile(&mut self, frame: &Frame, rect: Rect) -> Option<Tile> {
        if !rect.width.is_multiple_of(4) {
            return None;
        }
        let planar = self.planar_tile(frame, rect);
        let limit = planar.as_ref().map_or(
            usize::from(rect.width) * usize::from(rect.height) * self.bytes_per_pixel(),
            Vec::len,
        );
        match self
            .rle_depth
            .and_then(|depth| Some((depth, self.rle_tile(frame, rect, depth, limit)?)))
        {
            Some((depth, data)) => Some(Tile::Rle { data, depth }),
            None => planar.map(Tile::Planar),
        }
    }

    /// Fast-path Bitmap Update PDUs for `rects` of `frame`, appended to `out`.
    pub fn encode_rects(
        &mut self,
        frame: &Frame,
        rects: &[Rect],
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut batch: Vec<(Rect, Tile)> = Vec::new();
        let mut batch_len = 0;
        // Pieces still to encode, the next one last.
        let mut pending: Vec<Rect> = rects.iter().rev().copied().collect();
        while let Some(rect) = pending.pop() {
            let tile_sized = rect.width <= TILE_WIDTH && rect.height <= self.tile_height();
            let tile = match self.coded_tile(frame, rect) {
                Some(tile) if tile.data().len() + 32 <= MAX_PDU_DATA => tile,
                // Too big for one PDU, or not planar-coded: smaller pieces, down to tiles.
                _ if !tile_sized => {
                    let (first, second) = self.halve(rect);
                    pending.push(second);
                    pending.push(first);
                    continue;
                }
                _ => Tile::Raw(self.pixels(frame, rect)),
            };
            match tile {
                Tile::Planar(_) => self.tiles.planar += 1,
                Tile::Rle { .. } => self.tiles.rle += 1,
                Tile::Raw(_) => self.tiles.raw += 1,
            }
            let len = tile.data().len() + 32;
            if batch_len + len > MAX_PDU_DATA && !batch.is_empty() {
                self.flush(&batch, out)?;
                batch.clear();
                batch_len = 0;
            }
            batch_len += len;
            batch.push((rect, tile));
        }
        if !batch.is_empty() {
            self.flush(&batch, out)?;
        }
        Ok(())
    }

    /// `rect` (larger than a tile) in two: across its width at a multiple of 4 while it is
    /// wider than a tile and at least as wide as high, else across its height.
    fn halve(&self, rect: Rect) -> (Rect, Rect) {
        let cut_width = rect.width > TILE_WIDTH
            && (rect.width >= rect.height || rect.height <= self.tile_height());
        if cut_width {
            let left = (rect.width / 2)
                .next_multiple_of(4)
                .min(rect.width - 1)
                .max(1);
            (
                Rect {
                    width: left,
                    ..rect
                },
                Rect {
                    x: rect.x + left,
                    width: rect.width - left,
                    ..rect
                },
            )
        } else {
            let top = rect.height / 2;
            (
                Rect {
                    height: top,
                    ..rect
                },
                Rect {
                    y: rect.y + top,
                    height: rect.height - top,
                    ..rect
                },
            )
        }
    }

    fn flush(&mut self, batch: &[(Rect, Tile)], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let rectangles = batch
            .iter()
            .map(|(r, tile)| {
                let (compression_flags, compressed_data_header) = match tile {
                    Tile::Raw(_) => (Compression::empty(), None),
                    Tile::Planar(_) | Tile::Rle { .. } if self.no_compression_header => (
                        Compression::BITMAP_COMPRESSION | Compression::NO_BITMAP_COMPRESSION_HDR,
                        None,
                    ),
                    Tile::Planar(_) | Tile::Rle { .. } => (
                        Compression::BITMAP_COMPRESSION,
                        Some(CompressedDataHeader {
                            main_body_size: tile.data().len() as u16,
                            scan_width: r.width,
                            uncompressed_size: r.width
                                * r.height
                                * tile.depth(self.bpp).div_ceil(8),
                        }),
                    ),
                };
                BitmapData {
                    rectangle: InclusiveRectangle {
                        left: r.x,
                        top: r.y,
                        right: r.x + r.width - 1,
                        bottom: r.y + r.height - 1,
                    },
                    width: r.width,
                    height: r.height,
                    bits_per_pixel: tile.depth(self.bpp),
                    compression_flags,
                    compressed_data_header,
                    bitmap_data: tile.data(),
                }
            })
            .collect();
        let body = ironrdp_core::encode_vec(&BitmapUpdateData { rectangles })
            .map_err(|e| anyhow::anyhow!("encode a bitmap update: {e}"))?;
        self.send(UpdateCode::Bitmap, &body, out)
    }

    /// Appends a fast-path update PDU of `code` with `body`, bulk-compressed when the session
    /// is: every update goes through here, so the compressor sees them in sending order.
    fn send(&mut self, code: UpdateCode, body: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut compression_flags = None;
        let mut compression_type = None;
        let mut data = body;
        if let Some((compressor, kind)) = &mut self.bulk {
            let (size, flags) = compressor
                .compress(body)
                .map_err(|e| anyhow::anyhow!("bulk-compress an update: {e}"))?;
            // Compressed, or sent as it is with the history flushed: the client must know
            // either way. No flags: the PDU was outside the compressible sizes.
            let level2 = CompressionFlags::from_bits_truncate((flags & 0xe0) as u8);
            if !level2.is_empty() {
                compression_flags = Some(level2);
                compression_type = Some(*kind);
                if level2.contains(CompressionFlags::COMPRESSED) {
                    data = compressor.compressed_data(size);
                }
            }
        }
        let update = FastPathUpdatePdu {
            fragmentation: Fragmentation::Single,
            update_code: code,
            compression_flags,
            compression_type,
            data,
        };
        write_update(&update, out)
    }
}

impl BitmapEncoder {
    /// A Surface Frame Marker (a fast-path Surface Commands update).
    fn frame_marker(
        &mut self,
        frame_action: FrameAction,
        id: u32,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let body = ironrdp_core::encode_vec(&SurfaceCommand::FrameMarker(FrameMarkerPdu {
            frame_action,
            frame_id: Some(id),
        }))
        .map_err(|e| anyhow::anyhow!("encode a frame marker: {e}"))?;
        self.send(UpdateCode::SurfaceCommands, &body, out)
    }

    /// Sends `orders` (if any) as one Orders update.
    fn flush_orders(&mut self, orders: &mut Orders, out: &mut Vec<u8>) -> anyhow::Result<()> {
        if orders.is_empty() {
            return Ok(());
        }
        let body = orders.take();
        self.send(UpdateCode::Orders, &body, out)
    }

    /// Room for one more order in `orders`: sends it when it is full.
    fn room_for_order(&mut self, orders: &mut Orders, out: &mut Vec<u8>) -> anyhow::Result<()> {
        if orders.len() + MAX_ORDER > MAX_PDU_DATA {
            self.flush_orders(orders, out)?;
        }
        Ok(())
    }

    /// Fills `rects` with `color` as orders: MultiOpaqueRects of up to 45 rectangles where
    /// the client takes them, else one OpaqueRect each.
    fn fill_orders(
        &mut self,
        rects: &[Rect],
        color: u32,
        orders: &mut Orders,
        count: &mut OrderCount,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let color = color_bytes(color, self.bpp);
        let rects: Vec<Rect> = rects.iter().copied().filter(|r| !r.is_empty()).collect();
        let chunk = if self.orders.multi_opaque_rect {
            MAX_MULTI_RECTS
        } else {
            1
        };
        for group in rects.chunks(chunk) {
            self.room_for_order(orders, out)?;
            if let [rect] = group {
                orders.opaque_rect(*rect, color);
                count.opaque_rect += 1;
            } else {
                orders.multi_opaque_rect(group, color);
                count.multi_opaque_rect += 1;
            }
        }
        Ok(())
    }
}

impl ScreenEncoder for BitmapEncoder {
    fn op_kinds(&self) -> OpKinds {
        OpKinds {
            copy: self.orders.scr_blt,
            fill: self.orders.opaque_rect,
        }
    }

    /// The ops in their order: runs of copies and fills as Orders updates, runs of pixels as
    /// bitmap updates (a kind the client does not take as an order goes as pixels).
    fn encode(&mut self, frame: &Frame, ops: &[Op], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let id = match &mut self.frames {
            Some(frames) => {
                frames.sent = frames.sent.wrapping_add(1);
                Some(frames.sent)
            }
            None => None,
        };
        if let Some(id) = id {
            self.frame_marker(FrameAction::Begin, id, out)?;
        }
        let mut orders = Orders::default();
        let mut count = OrderCount::default();
        // Pixels not sent yet: at most one of `orders` and `rects` holds anything.
        let mut rects: Vec<Rect> = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let op = &ops[i];
            i += 1;
            let as_order = match op {
                Op::Copy { dst, .. } => self.orders.scr_blt && !dst.is_empty(),
                Op::Fill { .. } => self.orders.opaque_rect,
                Op::Pixels(_) => false,
            };
            if !as_order {
                self.flush_orders(&mut orders, out)?;
                let pixels = match op {
                    Op::Pixels(rect) => std::slice::from_ref(rect),
                    Op::Fill { rects, .. } => rects.as_slice(),
                    Op::Copy { dst, .. } => std::slice::from_ref(dst),
                };
                for rect in pixels.iter().filter(|r| !r.is_empty()) {
                    rects.extend(self.pieces(*rect, frame.width));
                }
                continue;
            }
            if !rects.is_empty() {
                self.encode_rects(frame, &rects, out)?;
                rects.clear();
            }
            match op {
                Op::Copy { src, dst } => {
                    self.room_for_order(&mut orders, out)?;
                    orders.scr_blt(*dst, *src);
                    count.scr_blt += 1;
                    tracing::trace!(
                        x = dst.x,
                        y = dst.y,
                        width = dst.width,
                        height = dst.height,
                        src_x = src.0,
                        src_y = src.1,
                        "ScrBlt"
                    );
                }
                Op::Fill { color, rects } => {
                    // With the fills of the same colour that follow.
                    let mut all = rects.clone();
                    while let Some(Op::Fill { color: next, rects }) = ops.get(i) {
                        if next != color {
                            break;
                        }
                        all.extend_from_slice(rects);
                        i += 1;
                    }
                    self.fill_orders(&all, *color, &mut orders, &mut count, out)?;
                }
                Op::Pixels(_) => {}
            }
        }
        self.flush_orders(&mut orders, out)?;
        if !rects.is_empty() {
            self.encode_rects(frame, &rects, out)?;
        }
        if let Some(id) = id {
            self.frame_marker(FrameAction::End, id, out)?;
        }
        let OrderCount {
            scr_blt,
            opaque_rect,
            multi_opaque_rect,
        } = count;
        if scr_blt + opaque_rect + multi_opaque_rect > 0 {
            tracing::debug!(
                frame = id,
                scr_blt,
                opaque_rect,
                multi_opaque_rect,
                "Drawing orders sent"
            );
        }
        let TileCount { planar, rle, raw } = std::mem::take(&mut self.tiles);
        if planar + rle + raw > 0 {
            tracing::debug!(frame = id, planar, rle, raw, "Bitmaps sent");
        }
        Ok(())
    }

    fn unacknowledged(&self) -> Option<u32> {
        self.frames.map(|f| f.sent.wrapping_sub(f.acknowledged))
    }

    fn acknowledged(&mut self, id: u32) {
        let Some(frames) = &mut self.frames else {
            tracing::debug!(id, "Frame acknowledgement ignored: no frames are marked");
            return;
        };
        // Only a frame sent and not acknowledged yet (ids wrap around).
        let in_flight = frames.sent.wrapping_sub(frames.acknowledged);
        let ahead = id.wrapping_sub(frames.acknowledged);
        if ahead == 0 || ahead > in_flight {
            tracing::debug!(
                id,
                sent = frames.sent,
                acknowledged = frames.acknowledged,
                "Frame acknowledgement ignored: not a frame in flight"
            );
            return;
        }
        frames.acknowledged = id;
        tracing::debug!(id, in_flight = in_flight - ahead, "Frame acknowledged");
    }
}

/// One coded tile.
enum Tile {
    Raw(Vec<u8>),
    Planar(Vec<u8>),
    /// Interleaved RLE at `depth` bits per pixel.
    Rle {
        data: Vec<u8>,
        depth: u16,
    },
}

impl Tile {
    fn data(&self) -> &[u8] {
        match self {
            Tile::Raw(d) | Tile::Planar(d) | Tile::Rle { data: d, .. } => d,
        }
    }

    /// Its bits per pixel in a session of `session` bits.
    fn depth(&self, session: u16) -> u16 {
        match self {
            Tile::Rle { depth, .. } => *depth,
            Tile::Raw(_) | Tile::Planar(_) => session,
        }
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
            generation: 0,
        }
    }

    #[test]
    fn planar_tiles_decode_to_the_captured_pixels() {
        use ironrdp_graphics::rdp6::BitmapStreamDecoder;
        // Gradients and checks: compressible, like a desktop.
        let (w, h) = (128u16, 40u16);
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let check = if (x / 8 + y / 8) % 2 == 0 { 0xe0 } else { 0x20 };
                data.extend_from_slice(&[(x * 2) as u8, (y * 5) as u8, check, 0]);
            }
        }
        let f = Frame {
            width: w,
            height: h,
            data: Arc::new(data),
            generation: 0,
        };
        let rect = Rect {
            x: 64,
            y: 8,
            width: 64,
            height: 32,
        };
        let mut e = BitmapEncoder::new(32, Codec::Auto, true);
        let stream = e
            .planar_tile(&f, rect)
            .expect("a compressible tile is planar");
        assert_eq!(stream[0], 0x10, "RLE with an alpha plane");
        // Without the alpha plane: the "no alpha" flag, fewer bytes, the same pixels.
        let lean = BitmapEncoder::new(32, Codec::Auto, true)
            .with_planar_alpha(false)
            .planar_tile(&f, rect)
            .unwrap();
        assert_eq!(lean[0], 0x30, "RLE, no alpha");
        assert!(lean.len() < stream.len());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        BitmapStreamDecoder::default()
            .decode_bitmap_stream_to_rgb24(&lean, &mut a, 64, 32)
            .unwrap();
        BitmapStreamDecoder::default()
            .decode_bitmap_stream_to_rgb24(&stream, &mut b, 64, 32)
            .unwrap();
        assert_eq!(a, b);
        assert!(stream.len() < 64 * 32 * 4 / 4, "{} bytes", stream.len());
        let mut rgb = Vec::new();
        BitmapStreamDecoder::default()
            .decode_bitmap_stream_to_rgb24(&stream, &mut rgb, 64, 32)
            .unwrap();
        assert_eq!(rgb.len(), 64 * 32 * 3);
        // The decoder keeps the stream's row order: bottom-up.
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            let (x, y) = (64 + i % 64, 8 + 31 - i / 64);
            let src = &f.data[(y * usize::from(w) + x) * 4..][..3];
            assert_eq!(px, [src[2], src[1], src[0]], "pixel ({x}, {y})");
        }
        // Widths that are not a multiple of 4, raw sessions and noise go raw.
        assert!(e.planar_tile(&f, Rect { width: 62, ..rect }).is_none());
        assert!(BitmapEncoder::new(32, Codec::Raw, true)
            .planar_tile(&f, rect)
            .is_none());
        // A tile the planes would not shrink (a 4x1 sliver of noise) goes raw.
        let sliver = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 1,
        };
        let noisy = Frame {
            width: 4,
            height: 1,
            data: Arc::new((0..16u8).map(|i| i.wrapping_mul(97)).collect()),
            generation: 0,
        };
        assert!(e.planar_tile(&noisy, sliver).is_none());
    }

    /// The update PDUs in `out`: (compression flags byte with the type, data).
    fn updates(out: &[u8]) -> Vec<(Option<u8>, Vec<u8>)> {
        coded_updates(out)
            .into_iter()
            .map(|(_, flags, data)| (flags.map(|f| f as u8), data))
            .collect()
    }

    #[test]
    fn bulk_compressed_updates_decompress_to_the_plain_ones() {
        use ironrdp_bulk::BulkCompressor;
        let mut data = Vec::new();
        for y in 0..96u32 {
            for x in 0..256u32 {
                data.extend_from_slice(&[(x ^ y) as u8, (x * 3) as u8, (y * 7) as u8, 0]);
            }
        }
        let f = Frame {
            width: 256,
            height: 96,
            data: Arc::new(data),
            generation: 0,
        };
        for kind in [
            CompressionType::K64,
            CompressionType::Rdp6,
            CompressionType::Rdp61,
        ] {
            for codec in [Codec::Raw, Codec::Auto] {
                let mut plain = BitmapEncoder::new(32, codec, true);
                let mut packed =
                    BitmapEncoder::new(32, codec, true).with_bulk_compression(Some(kind));
                let rects = plain.pieces(Rect::new(0, 0, f.width, f.height), f.width);
                let mut receiver = BulkCompressor::new(BulkType::Rdp61);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                // Twice: the second round finds the first in the history.
                for _ in 0..2 {
                    a.clear();
                    b.clear();
                    plain.encode_rects(&f, &rects, &mut a).unwrap();
                    packed.encode_rects(&f, &rects, &mut b).unwrap();
                    let (plain_updates, packed_updates) = (updates(&a), updates(&b));
                    assert_eq!(plain_updates.len(), packed_updates.len());
                    for ((none, expected), (flags, data)) in
                        plain_updates.iter().zip(&packed_updates)
                    {
                        assert_eq!(*none, None);
                        let flags = u32::from(flags.expect("compression flags on every update"));
                        let got = receiver.decompress(data, flags).unwrap();
                        assert_eq!(got, expected.as_slice(), "{kind:?} {codec:?}");
                    }
                }
                // A client offering RDP 6.1 is sent RDP 6.0 (see `with_bulk_compression`).
                let sent_type = updates(&b)[0].0.map(|f| f & 0x0f);
                let expected_type = match kind {
                    CompressionType::Rdp61 => CompressionType::Rdp6,
                    other => other,
                };
                assert_eq!(sent_type, Some(expected_type.as_u8()), "{kind:?}");
            }
        }
    }

    #[test]
    fn rectangles_are_cut_into_pieces_of_their_own() {
        let rect = |r: &Rect| (r.x, r.y, r.width, r.height);
        // Raw sessions: tiles of at most 64x32 at 32 bpp, cut from the rectangle's corner,
        // widths rounded up to a multiple of 4 where the screen (200 wide) allows.
        let e = BitmapEncoder::new(32, Codec::Raw, true);
        let pieces = |r: Rect| e.pieces(r, 200).iter().map(rect).collect::<Vec<_>>();
        assert_eq!(pieces(Rect::new(63, 31, 2, 2)), vec![(63, 31, 4, 2)]);
        assert_eq!(
            pieces(Rect::new(100, 10, 70, 40)),
            vec![
                (100, 10, 64, 32),
                (164, 10, 8, 32),
                (100, 42, 64, 8),
                (164, 42, 8, 8)
            ]
        );
        assert_eq!(pieces(Rect::new(199, 69, 1, 1)), vec![(199, 69, 1, 1)]);
        // Planar sessions: pieces of up to 512x256.
        let e = BitmapEncoder::new(32, Codec::Auto, true);
        assert_eq!(
            e.pieces(Rect::new(0, 0, 600, 300), 1280)
                .iter()
                .map(rect)
                .collect::<Vec<_>>(),
            vec![
                (0, 0, 512, 256),
                (512, 0, 88, 256),
                (0, 256, 512, 44),
                (512, 256, 88, 44)
            ]
        );
    }

    #[test]
    fn planar_sessions_send_whole_areas_and_halve_what_does_not_fit() {
        use ironrdp_pdu::bitmap::BitmapUpdateData;
        // Left half a gradient (compressible), right half noise (planar cannot shrink it).
        let (w, h) = (512u16, 200u16);
        let mut data = Vec::new();
        let mut seed = 1u32;
        for y in 0..h {
            for x in 0..w {
                if x < 256 {
                    data.extend_from_slice(&[x as u8, (y * 2) as u8, 0x40, 0]);
                } else {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    data.extend_from_slice(&(seed >> 8).to_le_bytes()[..3]);
                    data.push(0);
                }
            }
        }
        let f = Frame {
            width: w,
            height: h,
            data: Arc::new(data),
            generation: 0,
        };
        let mut e = BitmapEncoder::new(32, Codec::Auto, true).with_planar_alpha(false);
        let mut pieces = e.pieces(Rect::new(0, 0, 256, 200), w);
        pieces.extend(e.pieces(Rect::new(256, 0, 256, 200), w));
        assert_eq!(
            pieces.len(),
            2,
            "areas within a piece stay whole: {pieces:?}"
        );
        let mut out = Vec::new();
        e.encode_rects(&f, &pieces, &mut out).unwrap();
        // Decode every rectangle back: each pixel exactly once, all equal to the frame.
        let mut seen = vec![0u8; usize::from(w) * usize::from(h)];
        let (mut planar, mut raw) = (Vec::new(), 0);
        for (_, pdu) in updates(&out) {
            let update: BitmapUpdateData<'_> = ironrdp_core::decode(&pdu).unwrap();
            for r in update.rectangles {
                let (rx, ry) = (r.rectangle.left, r.rectangle.top);
                let (rw, rh) = (usize::from(r.width), usize::from(r.height));
                if r.compression_flags
                    .contains(Compression::BITMAP_COMPRESSION)
                {
                    planar.push((rw, rh));
                } else {
                    raw += 1;
                }
                let pixels = bitmap_pixels(&r);
                // Rows bottom-up in both codings.
                for (i, px) in pixels.iter().enumerate() {
                    let (x, y) = (usize::from(rx) + i % rw, usize::from(ry) + rh - 1 - i / rw);
                    let at = y * usize::from(w) + x;
                    seen[at] += 1;
                    assert_eq!(px[..], f.data[at * 4..at * 4 + 3], "pixel ({x}, {y})");
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "every pixel exactly once");
        assert_eq!(planar[0], (256, 200), "the gradient goes whole");
        // The noise (about 3 bytes a pixel as planes, too big for one PDU) is halved until
        // each piece fits: 64x50 pieces here.
        assert_eq!(&planar[1..], &[(64, 50); 16], "{planar:?}");
        assert_eq!(raw, 0);
    }

    /// Text on a flat colour goes as 24-bit interleaved RLE to a client that takes bitmaps
    /// of another depth, smaller than planar, to the same pixels; a gradient stays planar;
    /// rdesktop (no mixed depths) gets planar only. Sessions below 32 bits get RLE at their
    /// own depth instead of raw tiles.
    #[test]
    fn text_goes_as_interleaved_rle_where_that_is_smaller() {
        use ironrdp_pdu::bitmap::BitmapUpdateData;
        let (w, h) = (256u16, 64u16);
        let f = Frame::painted(w, h, |x, y| {
            if x < 128 {
                // Strokes of glyphs, dark on a red box.
                if rng_at(x, y).is_multiple_of(5) {
                    [0x10, 0x10, 0x10]
                } else {
                    [0x3d, 0x4f, 0xd9]
                }
            } else {
                // A smooth gradient: planar's row differences are flat, the XOR with the row
                // above that RLE codes is not.
                [(x + y) as u8, (x * 2) as u8, (y * 5) as u8]
            }
        });
        let areas = [Rect::new(0, 0, 128, h), Rect::new(128, 0, 128, h)];
        let sent = |mut e: BitmapEncoder| {
            let mut out = Vec::new();
            e.encode_rects(&f, &areas, &mut out).unwrap();
            let mut depths = Vec::new();
            for (_, pdu) in updates(&out) {
                let update: BitmapUpdateData<'_> = ironrdp_core::decode(&pdu).unwrap();
                for r in update.rectangles {
                    let (rw, rh) = (usize::from(r.width), usize::from(r.height));
                    for (i, px) in bitmap_pixels(&r).iter().enumerate() {
                        let x = usize::from(r.rectangle.left) + i % rw;
                        let y = usize::from(r.rectangle.top) + rh - 1 - i / rw;
                        let at = y * usize::from(w) + x;
                        assert_eq!(px[..], f.data[at * 4..at * 4 + 3], "pixel ({x}, {y})");
                    }
                    depths.push((r.rectangle.left, r.bits_per_pixel, r.bitmap_data.len()));
                }
            }
            (depths, out.len())
        };
        let modern = BitmapEncoder::new(32, Codec::Auto, true).with_planar_alpha(false);
        let (planar_only, planar_bytes) = sent(modern);
        let mixed = BitmapEncoder::new(32, Codec::Auto, true)
            .with_planar_alpha(false)
            .with_mixed_depth(true);
        let (depths, bytes) = sent(mixed);
        assert_eq!(
            depths.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
            [(0, 24), (128, 32)],
            "text as RLE, the gradient planar"
        );
        assert!(
            depths[0].2 * 2 < planar_only[0].2,
            "RLE {} against planar {} bytes",
            depths[0].2,
            planar_only[0].2
        );
        assert!(bytes < planar_bytes);
        // rdesktop's sessions: planar with the alpha plane, never another depth.
        let rdesktop = BitmapEncoder::new(32, Codec::Auto, true).with_mixed_depth(false);
        assert!(sent(rdesktop).0.iter().all(|d| d.1 == 32));
        // A 24-bit session: RLE instead of raw tiles.
        let mut e = BitmapEncoder::new(24, Codec::Auto, true);
        let mut out = Vec::new();
        e.encode_rects(&f, &e.pieces(areas[0], w), &mut out)
            .unwrap();
        let mut raw_len = 0;
        for (_, pdu) in updates(&out) {
            let update: BitmapUpdateData<'_> = ironrdp_core::decode(&pdu).unwrap();
            for r in update.rectangles {
                assert!(r
                    .compression_flags
                    .contains(Compression::BITMAP_COMPRESSION));
                assert_eq!(r.bits_per_pixel, 24);
                raw_len += r.bitmap_data.len();
            }
        }
        assert!(raw_len * 4 < 128 * 64 * 3, "{raw_len} bytes of RLE");
        // Codec::Raw means raw.
        let mut out = Vec::new();
        BitmapEncoder::new(24, Codec::Raw, true)
            .encode_rects(&f, &[areas[0]], &mut out)
            .unwrap();
        for (_, pdu) in updates(&out) {
            let update: BitmapUpdateData<'_> = ironrdp_core::decode(&pdu).unwrap();
            assert!(update
                .rectangles
                .iter()
                .all(|r| r.compression_flags.is_empty()));
        }
    }

    /// A fixed pseudo-random value per pixel.
    fn rng_at(x: u16, y: u16) -> u64 {
        deskport_testsupport::workload::Rng(u64::from(x) << 16 | u64::from(y) | 1 << 40).next()
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
            BitmapEncoder::new(24, Codec::Auto, true).pixels(&f, r),
            vec![0x10, 0x20, 0x30, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]
        );
        let p16 = BitmapEncoder::new(16, Codec::Auto, true).pixels(&f, r);
        assert_eq!(p16.len(), 8);
        assert_eq!(u16::from_le_bytes([p16[2], p16[3]]), 0xffff);
        let mut out = Vec::new();
        BitmapEncoder::new(32, Codec::Raw, true)
            .encode_rects(&f, &[r], &mut out)
            .unwrap();
        // A fast-path output header (action 0) with the PDU's length.
        assert_eq!(out[0] & 0x03, 0);
    }

    /// The pixels (`B, G, R`) of a 32-bit session's rectangle of a bitmap update, planar,
    /// 24-bit interleaved RLE or raw, rows bottom-up as all carry them.
    fn bitmap_pixels(r: &BitmapData<'_>) -> Vec<[u8; 3]> {
        use ironrdp_graphics::rdp6::BitmapStreamDecoder;
        if !r
            .compression_flags
            .contains(Compression::BITMAP_COMPRESSION)
        {
            return r
                .bitmap_data
                .chunks_exact(4)
                .map(|p| [p[0], p[1], p[2]])
                .collect();
        }
        let mut rgb = Vec::new();
        if r.bits_per_pixel == 24 {
            // Interleaved RLE: pixels as the wire carries them, `B, G, R`.
            ironrdp_graphics::rle::decompress(
                r.bitmap_data,
                &mut rgb,
                usize::from(r.width),
                usize::from(r.height),
                24,
            )
            .unwrap();
            return rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        }
        BitmapStreamDecoder::default()
            .decode_bitmap_stream_to_rgb24(
                r.bitmap_data,
                &mut rgb,
                usize::from(r.width),
                usize::from(r.height),
            )
            .unwrap();
        rgb.chunks_exact(3).map(|p| [p[2], p[1], p[0]]).collect()
    }

    /// Every update of `out` in order: (update code, compression flags with the type, data).
    fn coded_updates(out: &[u8]) -> Vec<(UpdateCode, Option<u32>, Vec<u8>)> {
        use ironrdp_core::{decode_cursor, ReadCursor};
        let mut cursor = ReadCursor::new(out);
        let mut found = Vec::new();
        while !cursor.is_empty() {
            let _header: ironrdp_pdu::fast_path::FastPathHeader =
                decode_cursor(&mut cursor).unwrap();
            let update: FastPathUpdatePdu<'_> = decode_cursor(&mut cursor).unwrap();
            let flags = update
                .compression_flags
                .map(|f| u32::from(f.bits() | update.compression_type.map_or(0, |t| t.as_u8())));
            found.push((update.update_code, flags, update.data.to_vec()));
        }
        found
    }

    /// A 32-bit client: carries out the updates of `out` in order on `screen` (`B, G, R, X`
    /// rows of `width`), decompressing with `receiver`'s history; the frame markers it saw
    /// and the orders, by type.
    fn client(
        out: &[u8],
        screen: &mut [u8],
        width: u16,
        receiver: &mut BulkCompressor,
    ) -> (Vec<(FrameAction, u32)>, Vec<&'static str>) {
        use super::super::orders::testing::{decode, Decoded};
        let stride = usize::from(width) * 4;
        let put = |screen: &mut [u8], x: i32, y: i32, bgr: [u8; 3]| {
            let at = y as usize * stride + x as usize * 4;
            screen[at..at + 3].copy_from_slice(&bgr);
        };
        let (mut markers, mut orders) = (Vec::new(), Vec::new());
        for (code, flags, data) in coded_updates(out) {
            let data = match flags {
                Some(flags) => receiver.decompress(&data, flags).unwrap().to_vec(),
                None => data,
            };
            match code {
                UpdateCode::Bitmap => {
                    let update: BitmapUpdateData<'_> = ironrdp_core::decode(&data).unwrap();
                    for r in update.rectangles {
                        let (rw, rh) = (usize::from(r.width), usize::from(r.height));
                        let pixels = bitmap_pixels(&r);
                        // Rows bottom-up.
                        for (i, px) in pixels.iter().enumerate() {
                            let x = i32::from(r.rectangle.left) + (i % rw) as i32;
                            let y = i32::from(r.rectangle.top) + (rh - 1 - i / rw) as i32;
                            put(screen, x, y, *px);
                        }
                    }
                }
                UpdateCode::Orders => {
                    for order in decode(&data) {
                        let fill = |screen: &mut [u8], r: (i32, i32, i32, i32), c: [u8; 3]| {
                            for y in r.1..r.1 + r.3 {
                                for x in r.0..r.0 + r.2 {
                                    put(screen, x, y, [c[2], c[1], c[0]]);
                                }
                            }
                        };
                        match order {
                            Decoded::ScrBlt { dst, rop, src } => {
                                assert_eq!(rop, 0xcc);
                                orders.push("ScrBlt");
                                // Overlap-safe, as xfreerdp and rdesktop copy.
                                let before = screen.to_vec();
                                let len = dst.2 as usize * 4;
                                for i in 0..dst.3 as usize {
                                    let from = (src.1 as usize + i) * stride + src.0 as usize * 4;
                                    let to = (dst.1 as usize + i) * stride + dst.0 as usize * 4;
                                    screen[to..to + len].copy_from_slice(&before[from..from + len]);
                                }
                            }
                            Decoded::OpaqueRect { rect, color } => {
                                orders.push("OpaqueRect");
                                let r = rect;
                                fill(
                                    screen,
                                    (r.0.into(), r.1.into(), r.2.into(), r.3.into()),
                                    color,
                                );
                            }
                            Decoded::MultiOpaqueRect { color, rects, .. } => {
                                orders.push("MultiOpaqueRect");
                                for r in rects {
                                    fill(screen, r, color);
                                }
                            }
                        }
                    }
                }
                UpdateCode::SurfaceCommands => {
                    let command: SurfaceCommand<'_> = ironrdp_core::decode(&data).unwrap();
                    let SurfaceCommand::FrameMarker(marker) = command else {
                        panic!("{command:?}")
                    };
                    markers.push((marker.frame_action, marker.frame_id.unwrap()));
                }
                other => panic!("unexpected update {other:?}"),
            }
        }
        (markers, orders)
    }

    fn rgb(screen: &[u8]) -> Vec<[u8; 3]> {
        screen.chunks_exact(4).map(|p| [p[0], p[1], p[2]]).collect()
    }

    /// Copies, fills and pixels reach the client in the order of the ops, as orders where it
    /// takes them and as bitmaps where not, bulk-compressed with one history, each frame
    /// between markers where it acknowledges frames.
    #[test]
    fn ops_reach_the_client_in_their_order() {
        let (w, h) = (256u16, 128u16);
        let old = |x: u16, y: u16| [(x * 3) as u8, (y * 5) as u8, (x ^ y) as u8];
        let new_pattern = |x: u16, y: u16| [(y * 9) as u8, 0x40, (x * 7) as u8];
        const RED: [u8; 3] = [0x20, 0x30, 0xe0];
        let first = Frame::painted(w, h, old);
        // Rows 0-95 scrolled up by 5; a red band below, a red square; a new pattern at A
        // (150,100 50x28), and the same pattern at B (0,100): copied from A once A is painted.
        let second = Frame::painted(w, h, |x, y| match (x, y) {
            (_, 0..95) => old(x, y + 5),
            (_, 95..100) => RED,
            (60..80, 105..115) => RED,
            (150..200, 100..) => new_pattern(x - 150, y - 100),
            (0..50, 100..) => new_pattern(x, y - 100),
            _ => old(x, y),
        });
        let red = 0xe03020;
        let ops = vec![
            Op::Copy {
                src: (0, 5),
                dst: Rect::new(0, 0, w, 95),
            },
            Op::Fill {
                color: red,
                rects: vec![Rect::new(0, 95, w, 5)],
            },
            Op::Fill {
                color: red,
                rects: vec![Rect::new(60, 105, 20, 10)],
            },
            Op::Pixels(Rect::new(150, 100, 50, 28)),
            Op::Copy {
                src: (150, 100),
                dst: Rect::new(0, 100, 50, 28),
            },
        ];
        let all = OrderKinds {
            scr_blt: true,
            opaque_rect: true,
            multi_opaque_rect: true,
        };
        let no_multi = OrderKinds {
            multi_opaque_rect: false,
            ..all
        };
        // (orders, markers, bulk, the orders expected in frame 2)
        let clients: [(OrderKinds, bool, Option<CompressionType>, &[&str]); 3] = [
            (
                all,
                true,
                Some(CompressionType::Rdp61),
                &["ScrBlt", "MultiOpaqueRect", "ScrBlt"],
            ),
            (
                no_multi,
                false,
                Some(CompressionType::K64),
                &["ScrBlt", "OpaqueRect", "OpaqueRect", "ScrBlt"],
            ),
            (OrderKinds::default(), false, None, &[]),
        ];
        for (kinds, markers, bulk, expected) in clients {
            let mut e = BitmapEncoder::new(32, Codec::Auto, true)
                .with_orders(kinds)
                .with_frame_markers(markers)
                .with_bulk_compression(bulk);
            assert_eq!(
                e.op_kinds(),
                OpKinds {
                    copy: kinds.scr_blt,
                    fill: kinds.opaque_rect
                }
            );
            let mut receiver = BulkCompressor::new(BulkType::Rdp61);
            let mut screen = vec![0u8; first.data.len()];
            let mut out = Vec::new();
            e.encode(&first, &[Op::Pixels(Rect::new(0, 0, w, h))], &mut out)
                .unwrap();
            let (m1, o1) = client(&out, &mut screen, w, &mut receiver);
            assert!(o1.is_empty());
            assert_eq!(rgb(&screen), rgb(&first.data));
            out.clear();
            e.encode(&second, &ops, &mut out).unwrap();
            let (m2, o2) = client(&out, &mut screen, w, &mut receiver);
            assert_eq!(o2, expected, "{kinds:?}");
            assert!(
                rgb(&screen) == rgb(&second.data),
                "{kinds:?}: the client shows frame 2"
            );
            if markers {
                assert_eq!(m1, [(FrameAction::Begin, 1), (FrameAction::End, 1)]);
                assert_eq!(m2, [(FrameAction::Begin, 2), (FrameAction::End, 2)]);
                assert_eq!(e.unacknowledged(), Some(2));
            } else {
                assert!(m1.is_empty() && m2.is_empty());
                assert_eq!(e.unacknowledged(), None);
            }
        }
    }

    #[test]
    fn many_fills_of_one_colour_go_in_orders_of_45_rectangles() {
        let f = frame(640, 64, 0);
        let rects: Vec<Rect> = (0..100).map(|i| Rect::new(i * 6, 10, 4, 4)).collect();
        let ops = [Op::Fill {
            color: 0,
            rects: rects.clone(),
        }];
        let count = |kinds: OrderKinds| {
            let mut e = BitmapEncoder::new(32, Codec::Raw, true).with_orders(kinds);
            let mut out = Vec::new();
            e.encode(&f, &ops, &mut out).unwrap();
            let mut screen = vec![0xffu8; f.data.len()];
            let mut receiver = BulkCompressor::new(BulkType::Rdp61);
            let (_, orders) = client(&out, &mut screen, 640, &mut receiver);
            assert_eq!(
                rgb(&screen),
                rgb(&{
                    let mut s = vec![0xffu8; f.data.len()];
                    for r in &rects {
                        for y in r.y..r.bottom() {
                            let at = usize::from(y) * 640 * 4 + usize::from(r.x) * 4;
                            s[at..at + usize::from(r.width) * 4].fill(0);
                        }
                    }
                    s
                })
            );
            orders
        };
        let multi = count(OrderKinds {
            scr_blt: false,
            opaque_rect: true,
            multi_opaque_rect: true,
        });
        // 45 + 45 + 10 (the last as one order too).
        assert_eq!(multi, ["MultiOpaqueRect"; 3]);
        let single = count(OrderKinds {
            scr_blt: false,
            opaque_rect: true,
            multi_opaque_rect: false,
        });
        assert_eq!(single.len(), 100);
    }

    #[test]
    fn frames_in_flight_until_acknowledged() {
        let f = frame(64, 32, 7);
        let ops = [Op::Pixels(Rect::new(0, 0, 64, 32))];
        let mut e = BitmapEncoder::new(32, Codec::Raw, true).with_frame_markers(true);
        let mut out = Vec::new();
        assert_eq!(e.unacknowledged(), Some(0));
        for _ in 0..3 {
            e.encode(&f, &ops, &mut out).unwrap();
        }
        assert_eq!(e.unacknowledged(), Some(3));
        e.acknowledged(2);
        assert_eq!(e.unacknowledged(), Some(1), "frame 2, and so frame 1");
        // Acknowledgements of frames not in flight (again, older, not sent yet) change nothing.
        for id in [2, 1, 4, 0, u32::MAX] {
            e.acknowledged(id);
            assert_eq!(e.unacknowledged(), Some(1), "acknowledging {id}");
        }
        e.acknowledged(3);
        assert_eq!(e.unacknowledged(), Some(0));
        // Without markers there is nothing to count.
        let mut plain = BitmapEncoder::new(32, Codec::Raw, true);
        plain.encode(&f, &ops, &mut out).unwrap();
        plain.acknowledged(1);
        assert_eq!(plain.unacknowledged(), None);
    }
}
