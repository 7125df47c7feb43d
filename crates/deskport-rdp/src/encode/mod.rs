//! Screen updates on the wire, chosen per session after the capability exchange: a
//! [`ScreenEncoder`] turns what changed on the desktop into PDUs. [`bitmap`] is the classic
//! path every client decodes (fast-path bitmap updates, planar or raw, bulk-compressed);
//! [`pointer`] carries the pointer's shape and position (the same on every path).

pub mod bitmap;
pub mod planar;
pub mod pointer;

use deskport_desktop::{Area, Frame};
use ironrdp_core::{Encode as _, WriteCursor};
use ironrdp_pdu::fast_path::{EncryptionFlags, FastPathHeader, FastPathUpdatePdu};
use ironrdp_pdu::rdp::client_info::CompressionType;

pub use bitmap::BitmapEncoder;

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

/// What changed on the desktop since the last frame an encoder sent.
#[derive(Debug, Clone, Copy)]
pub enum Changes<'a> {
    /// These areas (the desktop tracks what is drawn; the screen kept its size).
    Areas(&'a [Area]),
    /// Unknown: compare with the previous frame (`None`: everything, e.g. the first frame or
    /// a new size).
    Since(Option<&'a Frame>),
}

/// Turns screen changes into PDUs for one session.
pub trait ScreenEncoder: Send + std::fmt::Debug {
    /// Appends to `out` what the client needs to show `frame`, given what `changes`.
    fn encode(
        &mut self,
        frame: &Frame,
        changes: Changes<'_>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()>;
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
    /// Bulk compression of the updates (the best the client offered), if any.
    pub compression: Option<CompressionType>,
}

/// The encoder for a client with `caps`, coding as `codec` says.
pub fn for_client(caps: ClientCaps, codec: Codec) -> Box<dyn ScreenEncoder> {
    Box::new(
        BitmapEncoder::new(caps.bpp, codec, caps.no_compression_header)
            .with_bulk_compression(caps.compression)
            .with_planar_alpha(caps.planar_alpha),
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
