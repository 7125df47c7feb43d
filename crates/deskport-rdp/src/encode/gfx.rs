//! Screen updates over the graphics pipeline (MS-RDPEGFX), once the client is ready on the
//! graphics channel ([`crate::channels::gfx`]): each frame is one message of the channel's
//! ZGFX stream (2.2.5) holding Start Frame (2.2.2.11), the frame's ops in order —
//! Surface To Surface for copies (2.2.2.5), Solid Fill for fills (2.2.2.4), Wire To Surface 1
//! (2.2.2.1) for pixels, planar (2.2.4.2; rows top-down, no alpha plane) or uncompressed
//! where planar does not shrink them — and End Frame (2.2.2.12), the client's
//! acknowledgement of which counts the frame as shown.
//!
//! The surface is the whole desktop. Before the first frame, and whenever the frame size
//! changes (the desktop was resized), the graphics are reset to the new size (Reset
//! Graphics 2.2.2.14, a new surface 2.2.2.9 mapped to the output 2.2.2.15); such a frame
//! always paints the whole surface (the session's diff starts afresh with a new encoder or
//! size), since clients do not clear new surfaces.
//!
//! Nothing of the classic path (fast-path bitmap updates) is sent while this encoder is in
//! use: xfreerdp draws the graphics channel and fast-path updates from different threads.

use std::time::{SystemTime, UNIX_EPOCH};

use deskport_desktop::Frame;
use ironrdp_core::Encode as _;
use ironrdp_dvc::{encode_dvc_messages, DvcMessage};
use ironrdp_egfx::pdu::{
    CapabilitySet, Codec1Type, Color, CreateSurfacePdu, DeleteSurfacePdu, EndFramePdu, GfxPdu,
    MapSurfaceToOutputPdu, PixelFormat, Point, ResetGraphicsPdu, SolidFillPdu, StartFramePdu,
    SurfaceToSurfacePdu, Timestamp,
};
use ironrdp_pdu::gcc::{Monitor, MonitorFlags};
use ironrdp_pdu::geometry::ExclusiveRectangle;
use ironrdp_svc::{server_encode_svc_messages, ChannelFlags};

use super::clear::ClearEncoder;
use super::planar::PlanarEncoder;
use super::{Op, OpKinds, Rect, ScreenEncoder};
use crate::channels::gfx::{GfxLink, Wrapped};

/// Pixels go in pieces of at most this size: large enough to code well, small enough that
/// one piece is a fraction of a ZGFX segment's worth of planes.
const PIECE: (u16, u16) = (512, 256);

/// Solid Fill rectangles per PDU at most.
const FILL_RECTS: usize = 256;

/// Where the encoder sends: the graphics channel's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GfxChannel {
    /// The dynamic channel's id (within `drdynvc`).
    pub dvc_id: u32,
    /// The MCS channel of `drdynvc`.
    pub mcs_id: u16,
    /// The client's MCS user channel.
    pub user_id: u16,
}

/// What the encoder has sent, for the log (and the tests, which read it there).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GfxStats {
    pub frames: u64,
    pub surfaces: u64,
    pub planar: u64,
    pub clear: u64,
    pub uncompressed: u64,
    pub fills: u64,
    pub copies: u64,
    /// Bytes of GFX PDUs before ZGFX, and as sent (ZGFX-wrapped).
    pub plain_bytes: u64,
    pub wire_bytes: u64,
}

/// The graphics pipeline encoder of one session (see the module docs).
pub struct GfxEncoder {
    channel: GfxChannel,
    link: GfxLink,
    caps: CapabilitySet,
    /// The surface and its size, once created.
    surface: Option<(u16, u16, u16)>,
    next_surface: u16,
    planar: PlanarEncoder,
    clear: ClearEncoder,
    /// A ClearCodec stream being tried against planar.
    scratch: Vec<u8>,
    /// The frame's GFX PDUs.
    buf: Vec<u8>,
    stats: GfxStats,
}

impl std::fmt::Debug for GfxEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GfxEncoder")
            .field("channel", &self.channel)
            .field("caps", &self.caps)
            .field("surface", &self.surface)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl GfxEncoder {
    /// An encoder for a client that confirmed `caps` on `channel`, sending through `link`.
    /// Its first frame resets the graphics and creates the surface.
    pub fn new(channel: GfxChannel, caps: CapabilitySet, link: GfxLink) -> Self {
        Self {
            channel,
            link,
            caps,
            surface: None,
            next_surface: 0,
            planar: PlanarEncoder::default(),
            clear: ClearEncoder::default(),
            scratch: Vec::new(),
            buf: Vec::new(),
            stats: GfxStats::default(),
        }
    }

    pub fn stats(&self) -> GfxStats {
        self.stats
    }

    /// The PDUs of one frame (without ZGFX), appended to `self.buf`.
    fn frame_pdus(&mut self, frame: &Frame, ops: &[Op]) -> anyhow::Result<u32> {
        let size = (frame.width, frame.height);
        let surface = match self.surface {
            Some((id, w, h)) if (w, h) == size => id,
            old => self.new_surface(old.map(|s| s.0), size)?,
        };
        let id = self.link.next_frame();
        push(
            &GfxPdu::StartFrame(StartFramePdu {
                timestamp: now(),
                frame_id: id,
            }),
            &mut self.buf,
        )?;
        let screen = Rect::new(0, 0, frame.width, frame.height);
        for op in ops {
            match op {
                // A copy from or to outside the surface would be refused whole by the client
                // (FreeRDP checks every rectangle): its destination goes as pixels instead.
                Op::Copy { src, dst } if !copy_fits(*src, *dst, screen) => {
                    tracing::warn!(?src, ?dst, "A copy outside the screen sent as pixels");
                    for piece in dst.intersect(&screen).into_iter().flat_map(pieces) {
                        self.bitmap(frame, surface, piece);
                    }
                }
                Op::Copy { src, dst } => {
                    self.stats.copies += 1;
                    tracing::trace!(
                        x = dst.x,
                        y = dst.y,
                        width = dst.width,
                        height = dst.height,
                        src_x = src.0,
                        src_y = src.1,
                        "SurfaceToSurface"
                    );
                    push(
                        &GfxPdu::SurfaceToSurface(SurfaceToSurfacePdu {
                            source_surface_id: surface,
                            destination_surface_id: surface,
                            source_rectangle: exclusive(Rect::new(
                                src.0, src.1, dst.width, dst.height,
                            )),
                            destination_points: vec![Point { x: dst.x, y: dst.y }],
                        }),
                        &mut self.buf,
                    )?;
                }
                Op::Fill { color, rects } => {
                    let fill_pixel = Color {
                        b: *color as u8,
                        g: (color >> 8) as u8,
                        r: (color >> 16) as u8,
                        xa: 0xff,
                    };
                    for chunk in rects.chunks(FILL_RECTS) {
                        self.stats.fills += 1;
                        push(
                            &GfxPdu::SolidFill(SolidFillPdu {
                                surface_id: surface,
                                fill_pixel: fill_pixel.clone(),
                                rectangles: chunk.iter().map(|r| exclusive(*r)).collect(),
                            }),
                            &mut self.buf,
                        )?;
                    }
                }
                Op::Pixels(rect) => {
                    for piece in pieces(*rect) {
                        self.bitmap(frame, surface, piece);
                    }
                }
            }
        }
        push(
            &GfxPdu::EndFrame(EndFramePdu { frame_id: id }),
            &mut self.buf,
        )?;
        Ok(id)
    }

    /// Resets the graphics to `size` with a new surface mapped to the whole output (the old
    /// one, if any, deleted); its id.
    fn new_surface(
        &mut self,
        old: Option<u16>,
        (width, height): (u16, u16),
    ) -> anyhow::Result<u16> {
        push(
            &GfxPdu::ResetGraphics(ResetGraphicsPdu {
                width: u32::from(width),
                height: u32::from(height),
                monitors: vec![Monitor {
                    left: 0,
                    top: 0,
                    right: i32::from(width) - 1,
                    bottom: i32::from(height) - 1,
                    flags: MonitorFlags::PRIMARY,
                }],
            }),
            &mut self.buf,
        )?;
        if let Some(old) = old {
            push(
                &GfxPdu::DeleteSurface(DeleteSurfacePdu { surface_id: old }),
                &mut self.buf,
            )?;
        }
        let id = self.next_surface;
        self.next_surface = self.next_surface.wrapping_add(1);
        push(
            &GfxPdu::CreateSurface(CreateSurfacePdu {
                surface_id: id,
                width,
                height,
                pixel_format: PixelFormat::XRgb,
            }),
            &mut self.buf,
        )?;
        push(
            &GfxPdu::MapSurfaceToOutput(MapSurfaceToOutputPdu {
                surface_id: id,
                output_origin_x: 0,
                output_origin_y: 0,
            }),
            &mut self.buf,
        )?;
        self.surface = Some((id, width, height));
        // The client's ClearCodec sequence starts again (a new surface, graphics reset).
        self.clear.reset();
        self.stats.surfaces += 1;
        tracing::debug!(
            surface = id,
            width,
            height,
            "Graphics reset with a new surface"
        );
        Ok(id)
    }

    /// A Wire To Surface 1 PDU with `rect` of `frame`: ClearCodec (RLEX) where that is
    /// smaller than planar (text), else planar, or uncompressed (top-down `B, G, R, X` rows)
    /// when neither would be smaller. Written in place: the header, then the bitmap, then the
    /// lengths filled in.
    fn bitmap(&mut self, frame: &Frame, surface: u16, rect: Rect) {
        const HEADER: usize = 8 + 2 + 2 + 1 + 8 + 4;
        let (w, h) = (usize::from(rect.width), usize::from(rect.height));
        let stride = frame.stride();
        let row = |y: usize| {
            let start = (usize::from(rect.y) + y) * stride + usize::from(rect.x) * 4;
            &frame.data[start..start + w * 4]
        };
        let start = self.buf.len();
        self.buf.resize(start + HEADER, 0);
        self.planar.encode_top_down(w, h, row, &mut self.buf);
        let raw_len = w * h * 4;
        let planar_len = self.buf.len() - start - HEADER;
        self.scratch.clear();
        let codec = if self
            .clear
            .encode(w, h, row, planar_len.min(raw_len), &mut self.scratch)
        {
            self.buf.truncate(start + HEADER);
            self.buf.extend_from_slice(&self.scratch);
            self.stats.clear += 1;
            Codec1Type::ClearCodec
        } else if planar_len < raw_len {
            self.stats.planar += 1;
            Codec1Type::Planar
        } else {
            self.buf.truncate(start + HEADER);
            for y in 0..h {
                self.buf.extend_from_slice(row(y));
            }
            self.stats.uncompressed += 1;
            Codec1Type::Uncompressed
        };
        let data_len = self.buf.len() - start - HEADER;
        let header = &mut self.buf[start..start + HEADER];
        header[0..2].copy_from_slice(&1u16.to_le_bytes()); // RDPGFX_CMDID_WIRETOSURFACE_1
        header[2..4].copy_from_slice(&0u16.to_le_bytes());
        header[4..8].copy_from_slice(&((HEADER + data_len) as u32).to_le_bytes());
        header[8..10].copy_from_slice(&surface.to_le_bytes());
        header[10..12].copy_from_slice(&u16::from(codec).to_le_bytes());
        header[12] = u8::from(PixelFormat::XRgb);
        for (i, v) in [rect.x, rect.y, rect.right(), rect.bottom()]
            .into_iter()
            .enumerate()
        {
            header[13 + i * 2..15 + i * 2].copy_from_slice(&v.to_le_bytes());
        }
        header[21..25].copy_from_slice(&(data_len as u32).to_le_bytes());
    }
}

impl Drop for GfxEncoder {
    fn drop(&mut self) {
        let s = self.stats;
        tracing::info!(
            frames = s.frames,
            surfaces = s.surfaces,
            planar = s.planar,
            clear = s.clear,
            uncompressed = s.uncompressed,
            solid_fills = s.fills,
            surface_to_surface = s.copies,
            plain_bytes = s.plain_bytes,
            wire_bytes = s.wire_bytes,
            "Graphics pipeline totals"
        );
    }
}

impl ScreenEncoder for GfxEncoder {
    fn op_kinds(&self) -> OpKinds {
        OpKinds {
            copy: true,
            fill: true,
        }
    }

    fn encode(&mut self, frame: &Frame, ops: &[Op], out: &mut Vec<u8>) -> anyhow::Result<()> {
        self.buf.clear();
        self.frame_pdus(frame, ops)?;
        let wrapped = self.link.wrap(&self.buf).map_err(|e| anyhow::anyhow!(e))?;
        self.stats.frames += 1;
        self.stats.plain_bytes += self.buf.len() as u64;
        self.stats.wire_bytes += wrapped.len() as u64;
        let message: DvcMessage = Box::new(Wrapped(wrapped));
        let svc = encode_dvc_messages(
            self.channel.dvc_id,
            vec![message],
            ChannelFlags::SHOW_PROTOCOL,
        )
        .map_err(|e| anyhow::anyhow!("encode a graphics frame for drdynvc: {e}"))?;
        let bytes = server_encode_svc_messages(svc, self.channel.mcs_id, self.channel.user_id)
            .map_err(|e| anyhow::anyhow!("encode a graphics frame for its channel: {e}"))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn unacknowledged(&self) -> Option<u32> {
        self.link.in_flight()
    }

    /// (The channel counts acknowledgements as they arrive: [`GfxLink`].)
    fn acknowledged(&mut self, id: u32) {
        let _ = id;
    }
}

/// Appends one PDU.
fn push(pdu: &GfxPdu, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let start = buf.len();
    buf.resize(start + pdu.size(), 0);
    let mut cursor = ironrdp_core::WriteCursor::new(&mut buf[start..]);
    pdu.encode(&mut cursor)
        .map_err(|e| anyhow::anyhow!("encode a graphics PDU: {e}"))
}

/// Whether a copy of `dst`'s size from `src` to `dst` stays within `screen`.
fn copy_fits(src: (u16, u16), dst: Rect, screen: Rect) -> bool {
    let from = Rect::new(src.0, src.1, dst.width, dst.height);
    let inside = |r: Rect| {
        u32::from(r.x) + u32::from(r.width) <= u32::from(screen.width)
            && u32::from(r.y) + u32::from(r.height) <= u32::from(screen.height)
    };
    !dst.is_empty() && inside(from) && inside(dst)
}

fn exclusive(r: Rect) -> ExclusiveRectangle {
    ExclusiveRectangle {
        left: r.x,
        top: r.y,
        right: r.right(),
        bottom: r.bottom(),
    }
}

/// `rect` in pieces of at most [`PIECE`], rows of pieces top-down.
fn pieces(rect: Rect) -> Vec<Rect> {
    let mut out = Vec::new();
    let mut y = rect.y;
    while y < rect.bottom() {
        let h = PIECE.1.min(rect.bottom() - y);
        let mut x = rect.x;
        while x < rect.right() {
            let w = PIECE.0.min(rect.right() - x);
            out.push(Rect::new(x, y, w, h));
            x += w;
        }
        y += h;
    }
    out
}

/// The time of day (UTC) for Start Frame.
fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let day_ms = since.as_millis() % 86_400_000;
    Timestamp {
        milliseconds: (day_ms % 1000) as u16,
        seconds: (day_ms / 1000 % 60) as u8,
        minutes: (day_ms / 60_000 % 60) as u8,
        hours: (day_ms / 3_600_000) as u16,
    }
}

/// ironrdp's graphics pipeline client — what `deskport connect` decodes with — on the other
/// end of the server's channel processor, for tests: it takes what a session writes and
/// paints it on a screen of its own; its acknowledgements go back to the processor.
#[cfg(test)]
pub(crate) mod testing {
    use ironrdp_core::{decode_cursor, ReadCursor};
    use ironrdp_dvc::pdu::{DrdynvcDataPdu, DrdynvcServerPdu};
    use ironrdp_dvc::DvcProcessor as _;
    use ironrdp_egfx::client::{GraphicsPipelineClient, GraphicsPipelineHandler};
    use ironrdp_graphics::zgfx::CompressionMode;
    use ironrdp_pdu::mcs::SendDataIndication;
    use ironrdp_pdu::x224::X224;
    use tokio::sync::mpsc::UnboundedReceiver;

    use crate::channels::gfx::{processor, GfxEvent, GfxServer};

    pub const DVC_ID: u32 = 5;
    pub const DRDYNVC: u16 = 1004;
    pub const USER: u16 = 1007;

    struct Quiet;
    impl GraphicsPipelineHandler for Quiet {}

    /// The client and the server's processor of one graphics channel.
    pub struct Client {
        gfx: GraphicsPipelineClient,
        pub server: GfxServer,
        pub events: UnboundedReceiver<GfxEvent>,
        /// What the client shows: RGBA rows.
        pub screen: Vec<u8>,
        pub size: (u16, u16),
        /// Each GFX message received, as the kinds of PDUs it held.
        pub messages: usize,
    }

    impl Client {
        /// A client that advertised its capabilities and got them confirmed; the
        /// processor's Ready event is the first of `events`.
        pub fn connect(mode: CompressionMode) -> Self {
            let (mut server, events) = processor(mode);
            let mut gfx = GraphicsPipelineClient::new(Box::new(Quiet), None);
            server.start(DVC_ID).unwrap();
            let advertise = gfx.start(DVC_ID).unwrap();
            let mut client = Self {
                gfx,
                server,
                events,
                screen: Vec::new(),
                size: (0, 0),
                messages: 0,
            };
            for msg in advertise {
                let bytes = ironrdp_core::encode_vec(msg.as_ref()).unwrap();
                for reply in client.server.process(DVC_ID, &bytes).unwrap() {
                    let bytes = ironrdp_core::encode_vec(reply.as_ref()).unwrap();
                    client.gfx.process(DVC_ID, &bytes).unwrap();
                }
            }
            client
        }

        /// Takes what the session wrote (only graphics channel data is expected in it):
        /// decodes it, paints it, acknowledges frames.
        pub fn receive(&mut self, out: &[u8]) {
            for message in dvc_messages(out) {
                self.messages += 1;
                let acks = self.gfx.process(DVC_ID, &message).unwrap();
                for ack in acks {
                    let bytes = ironrdp_core::encode_vec(ack.as_ref()).unwrap();
                    assert!(self.server.process(DVC_ID, &bytes).unwrap().is_empty());
                }
                if let Some((w, h)) = self.gfx.take_output_reset() {
                    self.size = (w, h);
                    self.screen = vec![0; usize::from(w) * usize::from(h) * 4];
                }
                for update in self.gfx.drain_output() {
                    let r = update.region;
                    let width = usize::from(r.right - r.left) * 4;
                    for (i, y) in (r.top..r.bottom).enumerate() {
                        let at =
                            (usize::from(y) * usize::from(self.size.0) + usize::from(r.left)) * 4;
                        self.screen[at..at + width]
                            .copy_from_slice(&update.data[i * width..(i + 1) * width]);
                    }
                }
            }
        }

        /// Whether the client shows `frame` (`B, G, R, X` rows).
        pub fn shows(&self, frame: &deskport_desktop::Frame) -> bool {
            (frame.width, frame.height) == self.size
                && self
                    .screen
                    .chunks_exact(4)
                    .zip(frame.data.chunks_exact(4))
                    .all(|(c, f)| c[..3] == [f[2], f[1], f[0]])
        }
    }

    /// The complete messages on the graphics channel in `out` (X.224 data on `drdynvc`,
    /// then drdynvc Data First / Data PDUs).
    pub fn dvc_messages(out: &[u8]) -> Vec<Vec<u8>> {
        let mut cursor = ReadCursor::new(out);
        let mut messages = Vec::new();
        let mut partial: Option<(usize, Vec<u8>)> = None;
        while !cursor.is_empty() {
            let pdu: X224<SendDataIndication<'_>> = decode_cursor(&mut cursor).unwrap();
            assert_eq!(
                (pdu.0.channel_id, pdu.0.initiator_id),
                (DRDYNVC, USER),
                "graphics data only"
            );
            // The channel PDU header (8 bytes), then one drdynvc PDU per chunk here.
            let data = &pdu.0.user_data[8..];
            let dvc: DrdynvcServerPdu = ironrdp_core::decode(data).unwrap();
            let DrdynvcServerPdu::Data(data) = dvc else {
                panic!("{dvc:?}");
            };
            assert_eq!(data.channel_id(), DVC_ID);
            match data {
                DrdynvcDataPdu::DataFirst(first) => {
                    assert!(partial.is_none());
                    partial = Some((first.length() as usize, first.into_data()));
                }
                DrdynvcDataPdu::Data(d) => match partial.as_mut() {
                    Some((_, buf)) => buf.extend_from_slice(d.data()),
                    None => messages.push(d.into_data()),
                },
                other => panic!("{other:?}"),
            }
            if partial.as_ref().is_some_and(|(len, buf)| buf.len() == *len) {
                messages.extend(partial.take().map(|(_, buf)| buf));
            }
        }
        assert!(partial.is_none(), "a message cut off");
        messages
    }
}

#[cfg(test)]
mod tests {

    use ironrdp_graphics::zgfx::CompressionMode;

    use super::testing::{Client, DRDYNVC, DVC_ID, USER};
    use super::*;
    use crate::channels::gfx::GfxEvent;
    use crate::encode::diff::Diff;

    fn frame(w: u16, h: u16, paint: impl Fn(u16, u16) -> [u8; 3]) -> Frame {
        Frame::painted(w, h, paint)
    }

    /// A pixel of noise (splitmix64 of its position).
    fn noise(x: u16, y: u16, seed: u64) -> [u8; 3] {
        let mut z =
            (u64::from(x) << 32 | u64::from(y) << 8 | seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let v = (z ^ (z >> 31)).to_le_bytes();
        [v[0], v[1], v[2]]
    }

    fn encoder(client: &mut Client) -> GfxEncoder {
        let events: Vec<GfxEvent> = std::iter::from_fn(|| client.events.try_recv().ok()).collect();
        let Some(GfxEvent::Ready { caps, link, .. }) = events.into_iter().next() else {
            panic!("not ready");
        };
        let channel = GfxChannel {
            dvc_id: DVC_ID,
            mcs_id: DRDYNVC,
            user_id: USER,
        };
        GfxEncoder::new(channel, caps, link)
    }

    /// A desktop-like picture: gradients, text-like stripes, and a patch of noise planar
    /// cannot shrink.
    fn desktop(w: u16, h: u16, shift: u16) -> Frame {
        frame(w, h, |x, y| {
            let y = y + shift;
            if (100..140).contains(&x) && (20..60).contains(&y) {
                noise(x, y, 1)
            } else if y % 12 < 2 {
                [20, 20, 20]
            } else {
                [(x / 2) as u8, (y * 3) as u8, 200]
            }
        })
    }

    /// Frames coded by the encoder and decoded by ironrdp's client show what was captured,
    /// with either ZGFX mode: the first whole, then changes as fills and bitmaps, a scroll
    /// as a copy, and a new size with a new surface; every frame is acknowledged.
    #[test]
    fn the_client_shows_every_frame() {
        for mode in [CompressionMode::Never, CompressionMode::Auto] {
            let mut client = Client::connect(mode);
            let mut enc = encoder(&mut client);
            assert_eq!(enc.unacknowledged(), Some(0));
            let mut diff = Diff::new();
            let kinds = enc.op_kinds();
            let send = |enc: &mut GfxEncoder, client: &mut Client, f: &Frame, ops: &[Op]| {
                let mut out = Vec::new();
                enc.encode(f, ops, &mut out).unwrap();
                assert_eq!(enc.unacknowledged(), Some(1));
                client.receive(&out);
                assert_eq!(enc.unacknowledged(), Some(0), "{mode:?}: acknowledged");
                assert!(client.shows(f), "{mode:?}");
            };
            // The whole screen (odd sizes on purpose).
            let first = desktop(301, 157, 0);
            let ops = diff.ops(&first, None, kinds);
            send(&mut enc, &mut client, &first, &ops);
            let s = enc.stats();
            assert_eq!((s.frames, s.surfaces, s.planar), (1, 1, 1), "{s:?}");
            // A flat area changes (a fill), and the noise.
            let filled = frame(301, 157, |x, y| {
                if (10..90).contains(&x) && (30..70).contains(&y) {
                    [1, 2, 3]
                } else if (100..140).contains(&x) && (20..60).contains(&y) {
                    noise(x, y, 3)
                } else {
                    let p = &first.data[(usize::from(y) * 301 + usize::from(x)) * 4..][..3];
                    [p[0], p[1], p[2]]
                }
            });
            let ops = diff.ops(&filled, None, kinds);
            assert!(ops.iter().any(|o| matches!(o, Op::Fill { .. })), "{ops:?}");
            send(&mut enc, &mut client, &filled, &ops);
            assert!(enc.stats().fills > 0);
            // The whole screen scrolls up by 5 rows: a copy and the new rows.
            let scrolled = desktop(301, 157, 5);
            let ops = [
                Op::Copy {
                    src: (0, 5),
                    dst: Rect::new(0, 0, 301, 152),
                },
                Op::Pixels(Rect::new(0, 152, 301, 5)),
            ];
            // (Where the fill and the new noise were, the scrolled picture differs: sent as
            // pixels.)
            let mut fixed = ops.to_vec();
            fixed.push(Op::Pixels(Rect::new(10, 15, 130, 55)));
            send(&mut enc, &mut client, &scrolled, &fixed);
            assert_eq!(enc.stats().copies, 1);
            // A copy from beyond the screen's edge: its destination goes as pixels.
            let ops = [Op::Copy {
                src: (250, 0),
                dst: Rect::new(0, 0, 60, 20),
            }];
            let planar = enc.stats().planar;
            send(&mut enc, &mut client, &scrolled, &ops);
            assert_eq!(enc.stats().copies, 1);
            assert!(enc.stats().planar > planar);
            // A new size: the graphics are reset, the new surface painted whole.
            let smaller = desktop(200, 100, 9);
            let ops = Diff::new().ops(&smaller, None, kinds);
            send(&mut enc, &mut client, &smaller, &ops);
            let s = enc.stats();
            assert_eq!((s.frames, s.surfaces), (5, 2), "{s:?}");
            assert!(s.wire_bytes > 0 && s.plain_bytes > 0);
            if mode == CompressionMode::Never {
                assert!(s.wire_bytes > s.plain_bytes);
            }
            assert_eq!(client.messages, 5, "one message per frame");
        }
    }

    /// A frame larger than a ZGFX segment (65,535 bytes) goes as a multipart message, large
    /// rectangles are cut into pieces, and pixels planar would not shrink go uncompressed.
    #[test]
    fn large_frames_and_pieces() {
        let mut client = Client::connect(CompressionMode::Never);
        let mut enc = encoder(&mut client);
        let noise = frame(700, 300, |x, y| noise(x, y, 2));
        let mut out = Vec::new();
        enc.encode(&noise, &[Op::Pixels(Rect::new(0, 0, 700, 300))], &mut out)
            .unwrap();
        client.receive(&out);
        assert!(client.shows(&noise));
        let s = enc.stats();
        // Even noise is smaller as three planes than as four bytes a pixel.
        assert_eq!(
            (s.planar, s.uncompressed),
            (4, 0),
            "700x300 in 512x256 pieces: {s:?}"
        );
        assert!(s.plain_bytes > 65_535 * 8 && s.plain_bytes < 700 * 300 * 4);
        // A few pixels are not: uncompressed.
        let mut out = Vec::new();
        enc.encode(&noise, &[Op::Pixels(Rect::new(5, 6, 1, 2))], &mut out)
            .unwrap();
        client.receive(&out);
        assert!(client.shows(&noise));
        assert_eq!(enc.stats().uncompressed, 1);
        assert_eq!(
            pieces(Rect::new(3, 4, 1100, 300)),
            [
                Rect::new(3, 4, 512, 256),
                Rect::new(515, 4, 512, 256),
                Rect::new(1027, 4, 76, 256),
                Rect::new(3, 260, 512, 44),
                Rect::new(515, 260, 512, 44),
                Rect::new(1027, 260, 76, 44),
            ]
        );
    }
}
