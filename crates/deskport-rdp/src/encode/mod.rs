//! Screen updates on the wire. [`diff`] keeps what the client shows and turns each new frame
//! into [`Op`]s — copies of what moved, fills of what is flat, pixels of the rest — and a
//! [`ScreenEncoder`], chosen per session after the capability exchange, turns ops into PDUs:
//! [`bitmap`] is the classic path every client decodes (fast-path bitmap updates, planar or
//! raw, bulk-compressed; copies and fills as drawing orders, [`orders`], where the client
//! takes them); [`gfx`] the graphics pipeline's, for clients ready on that channel (the
//! session switches to it then); [`pointer`] carries the pointer's shape and position (the
//! same on every path).

pub mod bitmap;
pub mod clear;
pub mod gfx;
pub mod orders;
pub mod planar;
pub mod pointer;
pub mod rle;
pub mod zgfx;

use deskport_desktop::Frame;
use ironrdp_core::{Encode as _, WriteCursor};
use ironrdp_pdu::fast_path::{EncryptionFlags, FastPathHeader, FastPathUpdatePdu};
use ironrdp_pdu::rdp::client_info::CompressionType;

pub use bitmap::BitmapEncoder;
pub use deskport_desktop::diff;
pub use deskport_desktop::diff::{Op, OpKinds, Rect};

/// How screen updates are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Planar at 32 bits per pixel, raw otherwise.
    #[default]
    Auto,
    /// Always uncompressed (for comparisons and for clients that mis-decode planar).
    Raw,
}

/// The pixel `b, g, r` as a session of `bpp` bits carries it: `0xRRGGBB` at 24 and 32 bits,
/// the 15-bit (5-5-5) value at 15, the 16-bit (5-6-5) value otherwise.
pub(crate) fn pixel_value(b: u8, g: u8, r: u8, bpp: u16) -> u32 {
    let (b, g, r) = (u32::from(b), u32::from(g), u32::from(r));
    match bpp {
        24 | 32 => r << 16 | g << 8 | b,
        15 => (r >> 3) << 10 | (g >> 3) << 5 | b >> 3,
        _ => (r >> 3) << 11 | (g >> 2) << 5 | b >> 3,
    }
}

/// Turns screen updates into PDUs for one session.
pub trait ScreenEncoder: Send + std::fmt::Debug {
    /// The ops this encoder sends as such.
    fn op_kinds(&self) -> OpKinds;

    /// Appends to `out` what the client needs to carry out `ops` (only kinds of
    /// [`ScreenEncoder::op_kinds`] besides pixels) on its screen, the pixels taken from
    /// `frame`.
    fn encode(&mut self, frame: &Frame, ops: &[Op], out: &mut Vec<u8>) -> anyhow::Result<()>;

    /// Frames sent that the client has not acknowledged yet; `None` when the client does not
    /// acknowledge frames on this path (then the session paces on the socket instead).
    fn unacknowledged(&self) -> Option<u32> {
        None
    }

    /// The client acknowledged frame `id` (and so every frame before it).
    fn acknowledged(&mut self, id: u32) {
        let _ = id;
    }
}

/// What the client announced in the capability exchange that screen updates depend on.
#[derive(Debug, Clone, Copy)]
pub struct ClientCaps {
    /// The colour depth the client's Bitmap capability asks for.
    pub bpp: u16,
    /// The client's General capability has NO_BITMAP_COMPRESSION_HDR.
    pub no_compression_header: bool,
    /// Planar bitmaps carry an alpha plane (for clients that decode only those: rdesktop).
    pub planar_alpha: bool,
    /// The client decodes bitmaps of another depth than the session's (24-bit interleaved
    /// RLE in a 32-bit session): those announcing bitmap codecs, not rdesktop.
    pub mixed_depth: bool,
    /// Bulk compression of the updates (the best the client offered), if any.
    pub compression: Option<CompressionType>,
    /// The drawing orders the client's Order capability set supports.
    pub orders: orders::OrderKinds,
    /// The client acknowledges frames: it confirmed the FRAME_MARKER surface command and
    /// sent a Frame Acknowledge capability set (with this maxUnacknowledgedFrameCount).
    pub frame_acknowledge: Option<u32>,
}

/// The encoder for a client with `caps`, coding as `codec` says.
pub fn for_client(caps: ClientCaps, codec: Codec) -> Box<dyn ScreenEncoder> {
    Box::new(
        BitmapEncoder::new(caps.bpp, codec, caps.no_compression_header)
            .with_bulk_compression(caps.compression)
            .with_planar_alpha(caps.planar_alpha)
            .with_mixed_depth(caps.mixed_depth)
            .with_orders(caps.orders)
            .with_frame_markers(caps.frame_acknowledge.is_some()),
    )
}

/// Appends a fast-path output PDU with one update.
pub(crate) fn write_update(
    update: &FastPathUpdatePdu<'_>,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
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

/// The fuzz target `screen_codecs`: our bitmap encoders against the decoders clients use
/// (ironrdp-graphics', ports of FreeRDP's). `data` is read as a small picture — a width, a
/// palette size, then one palette index a pixel, so that runs and repeats occur — and coded
/// as 24- and 16-bit interleaved RLE and ClearCodec; each must decode to the same pixels.
/// Panics on any difference.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    if let Some((&w, rest)) = data.split_first() {
        if let Some((&k, rest)) = rest.split_first() {
            codec_round_trips(usize::from(w % 64) + 1, usize::from(k % 160) + 1, rest);
        }
    }
}

/// The fuzz target `zgfx_stream`: `data` through our ZGFX compressor twice (the second time
/// mostly as matches into the first), decoded by ironrdp-graphics' decompressor: it must
/// come back unchanged. (Its own target: a compressor's tables cost milliseconds to set up,
/// which would slow the bitmap codecs' target a hundredfold.)
#[cfg(feature = "fuzzing")]
#[allow(clippy::expect_used)] // An oracle panics on what it finds.
pub fn zgfx_fuzz_oracle(data: &[u8]) {
    let mut zgfx = zgfx::Zgfx::new();
    let mut decompressor = ironrdp_graphics::zgfx::Decompressor::new();
    for _ in 0..2 {
        let wire = zgfx.compress_and_wrap(data);
        let mut plain = Vec::new();
        decompressor
            .decompress(&wire, &mut plain)
            .expect("ZGFX decodes");
        assert!(plain == data, "ZGFX round trip");
    }
}

#[cfg(feature = "fuzzing")]
#[allow(clippy::expect_used)] // An oracle panics on what it finds.
fn codec_round_trips(width: usize, colours: usize, indexes: &[u8]) {
    let height = indexes.len() / width;
    if height == 0 {
        return;
    }
    let palette: Vec<u32> = (0..colours as u32)
        .map(|i| i.wrapping_mul(0x9e37_79b9) >> 8)
        .collect();
    let pixels: Vec<u32> = indexes[..width * height]
        .iter()
        .map(|&i| palette[usize::from(i) % colours])
        .collect();
    for (bytes, bpp, mask) in [(3usize, 24usize, 0xff_ffffu32), (2, 16, 0xffff)] {
        let values: Vec<u32> = pixels.iter().map(|p| p & mask).collect();
        let mut stream = Vec::new();
        rle::encode(&values, width, bytes, &mut stream);
        let mut decoded = Vec::new();
        ironrdp_graphics::rle::decompress(&stream, &mut decoded, width, height, bpp)
            .expect("RLE decodes");
        let expected: Vec<u8> = values
            .iter()
            .flat_map(|v| v.to_le_bytes()[..bytes].to_vec())
            .collect();
        assert!(decoded == expected, "RLE at {bpp} bits round trip");
    }
    // ClearCodec takes top-down `B, G, R, X` rows.
    let bgrx: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    let row = |y: usize| &bgrx[y * width * 4..(y + 1) * width * 4];
    let mut stream = Vec::new();
    let coded = clear::ClearEncoder::default().encode(width, height, row, usize::MAX, &mut stream);
    // It declines more than 127 colours, and streams decoders would refuse as too long.
    assert!(
        !coded || distinct(&pixels) <= 127,
        "ClearCodec takes up to 127 colours"
    );
    if coded {
        let decoded = ironrdp_graphics::clearcodec::ClearCodecDecoder::new()
            .decode(&stream, width as u16, height as u16)
            .expect("ClearCodec decodes");
        for (a, b) in decoded.chunks_exact(4).zip(bgrx.chunks_exact(4)) {
            assert!(a[..3] == b[..3], "ClearCodec round trip");
        }
    }
}

#[cfg(feature = "fuzzing")]
fn distinct(pixels: &[u32]) -> usize {
    let mut seen: Vec<u32> = pixels.to_vec();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}
