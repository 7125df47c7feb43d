//! The graphics pipeline's dynamic virtual channel, server side (MS-RDPEGFX,
//! `Microsoft::Windows::RDS::Graphics` over `drdynvc`): the capability exchange (2.2.2.18,
//! 2.2.2.19, 3.2.5.1), the client's frame acknowledgements (2.2.2.13, 3.2.5.2), and the one
//! ZGFX stream (RDP_SEGMENTED_DATA, 2.2.5; 3.1.9.1) that carries every message the server
//! sends on the channel.
//!
//! Our own `DvcProcessor` rather than ironrdp-egfx's `GraphicsPipelineServer`: a frame here is
//! one message of many commands (copies, fills, bitmaps anywhere on the surface,
//! [`crate::encode::gfx`]), which that server's API cannot build. ironrdp-egfx's PDU types
//! encode and decode every message.
//!
//! The client's Capabilities Advertise is answered with a Capabilities Confirm of the highest
//! version both sides know, AVC disabled (the server sends planar and uncompressed bitmaps),
//! and the session learns of it as [`GfxEvent::Ready`]; acknowledgements become
//! [`GfxEvent::Acknowledged`]. A malformed or unexpected client PDU (or the channel closing)
//! stops the channel for the rest of the connection with a log line and
//! [`GfxEvent::Failed`]: the session goes back to the classic path, it never ends.
//!
//! [`GfxLink`] is what the channel shares with the session's encoder: the ZGFX compressor
//! (the client keeps one history for every segment of the channel, raw ones included, so
//! every message must go through one compressor, in order) and the frames in flight (only
//! counters: a client that stops acknowledging costs nothing to remember; the session stops
//! sending frames when too many are in flight).

use std::sync::{Arc, Mutex};

use ironrdp_core::{impl_as_any, Decode as _, Encode, EncodeResult, ReadCursor, WriteCursor};
use ironrdp_dvc::{DvcEncode, DvcMessage, DvcProcessor, DvcServerProcessor};
use ironrdp_egfx::pdu::{
    CacheImportReplyPdu, CapabilitiesAdvertisePdu, CapabilitiesConfirmPdu, CapabilitiesV103Flags,
    CapabilitiesV104Flags, CapabilitiesV107Flags, CapabilitiesV10Flags, CapabilitiesV81Flags,
    CapabilitySet, CapabilityVersion, GfxPdu, QueueDepth,
};
use ironrdp_graphics::zgfx::{self, CompressionMode};
use ironrdp_pdu::PduResult;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::encode::zgfx::Zgfx;

/// How the server's messages on the channel are compressed (ZGFX, MS-RDPEGFX 3.1.9.1): each
/// segment compressed where that makes it smaller, by our own compressor
/// ([`crate::encode::zgfx`]; ironrdp-graphics' takes about 100 ms a frame on the heavy
/// workload, `benches/zgfx.rs`). `Never` (uncompressed segments) is kept for tests.
pub const ZGFX_MODE: CompressionMode = CompressionMode::Auto;

/// What the graphics channel reports to the session loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GfxEvent {
    /// The client confirmed `caps` on dynamic channel `channel_id`: frames can go to it
    /// through `link` (again after a new Capabilities Advertise: a new surface, everything
    /// painted again).
    Ready {
        channel_id: u32,
        caps: CapabilitySet,
        link: GfxLink,
    },
    /// The client has shown every frame up to `frame_id`.
    Acknowledged { frame_id: u32 },
    /// The channel is no longer usable (the reason, for the log): closed by the client, or
    /// the client sent something malformed or unexpected.
    Failed(String),
}

/// The channel's processor and where its events arrive. `mode`: how the server's messages
/// are compressed.
pub fn processor(mode: CompressionMode) -> (GfxServer, UnboundedReceiver<GfxEvent>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = GfxServer {
        events: tx,
        link: GfxLink::new(mode),
        state: State::Waiting,
        channel_id: None,
    };
    (server, rx)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Opened, no capabilities yet.
    Waiting,
    /// Capabilities confirmed.
    Ready,
    /// Stopped for good (what the client sends is ignored).
    Failed,
}

/// The server side of the graphics channel (a dynamic channel of `drdynvc`).
pub struct GfxServer {
    events: UnboundedSender<GfxEvent>,
    link: GfxLink,
    state: State,
    channel_id: Option<u32>,
}

impl std::fmt::Debug for GfxServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GfxServer")
            .field("state", &self.state)
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

impl_as_any!(GfxServer);

impl DvcProcessor for GfxServer {
    fn channel_name(&self) -> &str {
        ironrdp_egfx::CHANNEL_NAME
    }

    fn start(&mut self, channel_id: u32) -> PduResult<Vec<DvcMessage>> {
        tracing::debug!(channel_id, "Graphics channel open");
        self.channel_id = Some(channel_id);
        Ok(Vec::new())
    }

    /// Never an error: what the client sends wrong stops this channel only.
    fn process(&mut self, channel_id: u32, payload: &[u8]) -> PduResult<Vec<DvcMessage>> {
        if self.state == State::Failed {
            return Ok(Vec::new());
        }
        match self.handle(channel_id, payload) {
            Ok(replies) => Ok(replies),
            Err(reason) => {
                self.fail(reason);
                Ok(Vec::new())
            }
        }
    }

    fn close(&mut self, channel_id: u32) {
        if self.state != State::Failed {
            tracing::info!(channel_id, "The client closed the graphics channel");
            self.state = State::Failed;
            let _ = self
                .events
                .send(GfxEvent::Failed("the client closed the channel".to_owned()));
        }
    }
}

impl DvcServerProcessor for GfxServer {}

impl GfxServer {
    /// The client's message: the replies, or why the channel stops.
    fn handle(&mut self, channel_id: u32, payload: &[u8]) -> Result<Vec<DvcMessage>, String> {
        let mut replies = Vec::new();
        for pdu in parse(payload)? {
            match pdu {
                GfxPdu::CapabilitiesAdvertise(advertised) => {
                    let caps = choose(&advertised)?;
                    let confirm =
                        GfxPdu::CapabilitiesConfirm(CapabilitiesConfirmPdu::from_typed(&caps));
                    replies.push(self.link.message(&confirm)?);
                    if self.state == State::Ready {
                        tracing::info!(
                            ?caps,
                            "The client advertised its graphics capabilities again"
                        );
                    }
                    self.state = State::Ready;
                    // Frames sent before are the old surface's: not waited for.
                    self.link.restart();
                    tracing::info!(
                        version = format!("{:#x}", caps.version().0),
                        ?caps,
                        "Graphics pipeline capabilities confirmed"
                    );
                    let _ = self.events.send(GfxEvent::Ready {
                        channel_id,
                        caps,
                        link: self.link.clone(),
                    });
                }
                GfxPdu::FrameAcknowledge(ack) if self.state == State::Ready => {
                    let suspend = ack.queue_depth == QueueDepth::Suspend;
                    if self.link.acknowledge(ack.frame_id, suspend)? {
                        let _ = self.events.send(GfxEvent::Acknowledged {
                            frame_id: ack.frame_id,
                        });
                    }
                }
                GfxPdu::CacheImportOffer(offer) if self.state == State::Ready => {
                    // No bitmap cache on this server: nothing imported (3.2.5.4).
                    tracing::debug!(entries = offer.cache_entries.len(), "Cache import declined");
                    let reply = GfxPdu::CacheImportReply(CacheImportReplyPdu {
                        cache_slots: Vec::new(),
                    });
                    replies.push(self.link.message(&reply)?);
                }
                // Quality of experience reports (2.2.2.21) are optional and only informative.
                GfxPdu::QoeFrameAcknowledge(_) if self.state == State::Ready => {}
                other => {
                    return Err(format!(
                        "unexpected {} in state {:?}",
                        pdu_name(&other),
                        self.state
                    ))
                }
            }
        }
        Ok(replies)
    }

    fn fail(&mut self, reason: String) {
        tracing::warn!(
            channel_id = self.channel_id,
            reason,
            "Graphics channel stopped: the client sent a malformed or unexpected PDU; the session goes on without it"
        );
        self.state = State::Failed;
        let _ = self.events.send(GfxEvent::Failed(reason));
    }
}

/// The PDUs of one client message: one or more whole PDUs, each of the length its header
/// says (MS-RDPEGFX 2.2.1.5); the client's messages are not ZGFX-wrapped.
fn parse(payload: &[u8]) -> Result<Vec<GfxPdu>, String> {
    const HEADER: usize = 8;
    if payload.is_empty() {
        return Err("an empty message".to_owned());
    }
    let mut pdus = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err(format!("a truncated PDU header ({} bytes)", rest.len()));
        }
        let length = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length < HEADER || length > rest.len() {
            return Err(format!(
                "a PDU length of {length} with {} bytes in the message",
                rest.len()
            ));
        }
        let (one, next) = rest.split_at(length);
        let mut cursor = ReadCursor::new(one);
        let pdu = GfxPdu::decode(&mut cursor).map_err(|e| format!("an undecodable PDU: {e}"))?;
        if !cursor.is_empty() {
            tracing::debug!(
                extra = cursor.len(),
                pdu = pdu_name(&pdu),
                "Bytes after a graphics PDU's fields ignored"
            );
        }
        pdus.push(pdu);
        rest = next;
    }
    Ok(pdus)
}

/// The capability set to confirm: the client's highest version this server knows, in the
/// order FreeRDP's server prefers them, with its flags, and AVC off (this server encodes no
/// H.264). `Err` when the advertisement is malformed or has nothing usable.
pub fn choose(advertised: &CapabilitiesAdvertisePdu) -> Result<CapabilitySet, String> {
    const PREFERENCE: [CapabilityVersion; 11] = [
        CapabilityVersion::V10_7,
        CapabilityVersion::V10_6,
        CapabilityVersion::V10_6_ERR,
        CapabilityVersion::V10_5,
        CapabilityVersion::V10_4,
        CapabilityVersion::V10_3,
        CapabilityVersion::V10_2,
        CapabilityVersion::V10_1,
        CapabilityVersion::V10,
        CapabilityVersion::V8_1,
        CapabilityVersion::V8,
    ];
    if advertised.0.is_empty() {
        return Err("a capabilities advertisement without capability sets".to_owned());
    }
    for version in PREFERENCE {
        let Some(set) = advertised.0.iter().find(|s| s.version == version) else {
            continue;
        };
        let parsed = set
            .parsed()
            .map_err(|e| format!("a malformed capability set {:#x}: {e}", version.0))?;
        let Some(caps) = parsed else {
            continue;
        };
        return Ok(match caps {
            CapabilitySet::V8_1 { flags } => CapabilitySet::V8_1 {
                flags: flags - CapabilitiesV81Flags::AVC420_ENABLED,
            },
            CapabilitySet::V10 { flags } => CapabilitySet::V10 {
                flags: flags | CapabilitiesV10Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_2 { flags } => CapabilitySet::V10_2 {
                flags: flags | CapabilitiesV10Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_3 { flags } => CapabilitySet::V10_3 {
                flags: flags | CapabilitiesV103Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_4 { flags } => CapabilitySet::V10_4 {
                flags: flags | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_5 { flags } => CapabilitySet::V10_5 {
                flags: flags | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_6 { flags } => CapabilitySet::V10_6 {
                flags: flags | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_6Err { flags } => CapabilitySet::V10_6Err {
                flags: flags | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_7 { flags } => CapabilitySet::V10_7 {
                flags: flags | CapabilitiesV107Flags::AVC_DISABLED,
            },
            other @ (CapabilitySet::V8 { .. } | CapabilitySet::V10_1) => other,
        });
    }
    let versions: Vec<String> = advertised
        .0
        .iter()
        .map(|s| format!("{:#x}", s.version.0))
        .collect();
    Err(format!(
        "no capability version this server knows (offered: {})",
        versions.join(", ")
    ))
}

/// The PDU's name, for the log (without formatting its fields: a client may send megabytes).
fn pdu_name(pdu: &GfxPdu) -> &'static str {
    match pdu {
        GfxPdu::WireToSurface1(_) => "Wire To Surface 1",
        GfxPdu::WireToSurface2(_) => "Wire To Surface 2",
        GfxPdu::DeleteEncodingContext(_) => "Delete Encoding Context",
        GfxPdu::SolidFill(_) => "Solid Fill",
        GfxPdu::SurfaceToSurface(_) => "Surface To Surface",
        GfxPdu::SurfaceToCache(_) => "Surface To Cache",
        GfxPdu::CacheToSurface(_) => "Cache To Surface",
        GfxPdu::EvictCacheEntry(_) => "Evict Cache Entry",
        GfxPdu::CreateSurface(_) => "Create Surface",
        GfxPdu::DeleteSurface(_) => "Delete Surface",
        GfxPdu::StartFrame(_) => "Start Frame",
        GfxPdu::EndFrame(_) => "End Frame",
        GfxPdu::FrameAcknowledge(_) => "Frame Acknowledge",
        GfxPdu::ResetGraphics(_) => "Reset Graphics",
        GfxPdu::MapSurfaceToOutput(_) => "Map Surface To Output",
        GfxPdu::CacheImportOffer(_) => "Cache Import Offer",
        GfxPdu::CacheImportReply(_) => "Cache Import Reply",
        GfxPdu::CapabilitiesAdvertise(_) => "Capabilities Advertise",
        GfxPdu::CapabilitiesConfirm(_) => "Capabilities Confirm",
        GfxPdu::QoeFrameAcknowledge(_) => "QoE Frame Acknowledge",
        _ => "a mapping PDU",
    }
}

/// What the channel and the session's encoder share (cheap to clone): the channel's ZGFX
/// stream and its frames in flight.
#[derive(Clone)]
pub struct GfxLink(Arc<Mutex<Link>>);

struct Link {
    compressor: Zgfx,
    mode: CompressionMode,
    /// The last frame id given out (0: none; ids start at 1).
    sent: u32,
    /// The last frame the client acknowledged (frames up to it are shown).
    acked: u32,
    /// The client asked the server not to wait for acknowledgements
    /// (SUSPEND_FRAME_ACKNOWLEDGEMENT, 2.2.2.13) until it sends a normal one again.
    suspended: bool,
}

impl std::fmt::Debug for GfxLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = self.lock();
        f.debug_struct("GfxLink")
            .field("mode", &link.mode)
            .field("sent", &link.sent)
            .field("acked", &link.acked)
            .field("suspended", &link.suspended)
            .finish()
    }
}

impl PartialEq for GfxLink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GfxLink {}

impl GfxLink {
    pub fn new(mode: CompressionMode) -> Self {
        Self(Arc::new(Mutex::new(Link {
            compressor: Zgfx::new(),
            mode,
            sent: 0,
            acked: 0,
            suspended: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `pdus` (whole GFX PDUs, in order) as one message of the channel's ZGFX stream.
    pub fn wrap(&self, pdus: &[u8]) -> Result<Vec<u8>, String> {
        let mut link = self.lock();
        let Link {
            compressor, mode, ..
        } = &mut *link;
        Ok(match mode {
            CompressionMode::Never => zgfx::wrap_uncompressed(pdus),
            CompressionMode::Auto | CompressionMode::Always => compressor.compress_and_wrap(pdus),
        })
    }

    /// One PDU as a message of the channel's ZGFX stream, ready for `drdynvc`.
    fn message(&self, pdu: &GfxPdu) -> Result<DvcMessage, String> {
        let bytes = ironrdp_core::encode_vec(pdu).map_err(|e| format!("encode a reply: {e}"))?;
        Ok(Box::new(Wrapped(self.wrap(&bytes)?)))
    }

    /// The id of a new frame.
    pub fn next_frame(&self) -> u32 {
        let mut link = self.lock();
        link.sent = match link.sent.wrapping_add(1) {
            0 => 1,
            id => id,
        };
        link.sent
    }

    /// Frames sent and not acknowledged; `None` while the client has suspended
    /// acknowledgements.
    pub fn in_flight(&self) -> Option<u32> {
        let link = self.lock();
        (!link.suspended).then(|| link.sent.wrapping_sub(link.acked))
    }

    /// Frames sent so far are not waited for (a new surface after a new capability exchange).
    fn restart(&self) {
        let mut link = self.lock();
        link.acked = link.sent;
        link.suspended = false;
    }

    /// The client acknowledged `id`: `Ok(true)` when that is news, `Ok(false)` for an old
    /// frame again, `Err` for a frame never sent.
    fn acknowledge(&self, id: u32, suspend: bool) -> Result<bool, String> {
        let mut link = self.lock();
        link.suspended = suspend;
        let ahead = id.wrapping_sub(link.acked);
        let in_flight = link.sent.wrapping_sub(link.acked);
        if ahead == 0 || ahead > u32::MAX / 2 {
            tracing::debug!(id, acked = link.acked, "An old frame acknowledged again");
            return Ok(false);
        }
        if ahead > in_flight {
            return Err(format!(
                "an acknowledgement of frame {id}, which was never sent (the last one sent is {})",
                link.sent
            ));
        }
        link.acked = id;
        Ok(true)
    }
}

/// A message already in its wire form (ZGFX-wrapped), for `drdynvc`.
pub struct Wrapped(pub Vec<u8>);

impl Encode for Wrapped {
    fn encode(&self, dst: &mut WriteCursor<'_>) -> EncodeResult<()> {
        ironrdp_core::ensure_size!(in: dst, size: self.0.len());
        dst.write_slice(&self.0);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "RDP_SEGMENTED_DATA"
    }

    fn size(&self) -> usize {
        self.0.len()
    }
}

impl DvcEncode for Wrapped {}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wrapped({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_egfx::pdu::{
        CapabilitiesV8Flags, EndFramePdu, FrameAcknowledgePdu, RawCapabilitySet,
    };

    /// What xfreerdp 2.11 `/gfx` advertises (H.264 off), in its order.
    fn xfreerdp_caps() -> CapabilitiesAdvertisePdu {
        CapabilitiesAdvertisePdu::from_typed(&[
            CapabilitySet::V8 {
                flags: CapabilitiesV8Flags::THIN_CLIENT,
            },
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::THIN_CLIENT | CapabilitiesV81Flags::SMALL_CACHE,
            },
            CapabilitySet::V10 {
                flags: CapabilitiesV10Flags::SMALL_CACHE,
            },
            CapabilitySet::V10_1,
            CapabilitySet::V10_2 {
                flags: CapabilitiesV10Flags::SMALL_CACHE,
            },
            CapabilitySet::V10_3 {
                flags: CapabilitiesV103Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_4 {
                flags: CapabilitiesV104Flags::SMALL_CACHE,
            },
            CapabilitySet::V10_5 {
                flags: CapabilitiesV104Flags::SMALL_CACHE,
            },
            CapabilitySet::V10_6 {
                flags: CapabilitiesV104Flags::SMALL_CACHE,
            },
            CapabilitySet::V10_7 {
                flags: CapabilitiesV107Flags::SMALL_CACHE | CapabilitiesV107Flags::AVC_DISABLED,
            },
        ])
    }

    fn bytes(pdu: GfxPdu) -> Vec<u8> {
        ironrdp_core::encode_vec(&pdu).unwrap()
    }

    /// The replies, ZGFX-unwrapped, as PDUs.
    fn replies(msgs: Vec<DvcMessage>) -> Vec<GfxPdu> {
        let mut zgfx = zgfx::Decompressor::new();
        let mut pdus = Vec::new();
        for msg in msgs {
            let wire = ironrdp_core::encode_vec(msg.as_ref()).unwrap();
            let mut plain = Vec::new();
            zgfx.decompress(&wire, &mut plain).unwrap();
            pdus.extend(parse(&plain).unwrap());
        }
        pdus
    }

    fn events(rx: &mut UnboundedReceiver<GfxEvent>) -> Vec<GfxEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn ready(server: &mut GfxServer, rx: &mut UnboundedReceiver<GfxEvent>) -> GfxLink {
        server.start(7).unwrap();
        let out = server
            .process(7, &bytes(GfxPdu::CapabilitiesAdvertise(xfreerdp_caps())))
            .unwrap();
        assert_eq!(replies(out).len(), 1);
        match events(rx).pop() {
            Some(GfxEvent::Ready { link, .. }) => link,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_highest_version_is_confirmed_with_avc_disabled() {
        let (mut server, mut rx) = processor(CompressionMode::Never);
        server.start(7).unwrap();
        let out = server
            .process(7, &bytes(GfxPdu::CapabilitiesAdvertise(xfreerdp_caps())))
            .unwrap();
        let expected = CapabilitySet::V10_7 {
            flags: CapabilitiesV107Flags::SMALL_CACHE | CapabilitiesV107Flags::AVC_DISABLED,
        };
        assert_eq!(
            replies(out),
            vec![GfxPdu::CapabilitiesConfirm(
                CapabilitiesConfirmPdu::from_typed(&expected)
            )]
        );
        assert!(matches!(
            &events(&mut rx)[..],
            [GfxEvent::Ready { channel_id: 7, caps, .. }] if *caps == expected
        ));
        // ironrdp's client (deskport connect) offers 10.x without AVC_DISABLED: it is added.
        let caps = choose(&CapabilitiesAdvertisePdu::from_typed(&[
            CapabilitySet::V10_5 {
                flags: CapabilitiesV104Flags::SMALL_CACHE,
            },
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED,
            },
        ]))
        .unwrap();
        assert_eq!(
            caps,
            CapabilitySet::V10_5 {
                flags: CapabilitiesV104Flags::SMALL_CACHE | CapabilitiesV104Flags::AVC_DISABLED
            }
        );
        // `/gfx:AVC420`: 8.1 without AVC420.
        let caps = choose(&CapabilitiesAdvertisePdu::from_typed(&[
            CapabilitySet::V8 {
                flags: CapabilitiesV8Flags::THIN_CLIENT,
            },
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::THIN_CLIENT,
            },
        ]))
        .unwrap();
        assert_eq!(
            caps,
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::THIN_CLIENT
            }
        );
        // Versions this server does not know are passed over.
        let unknown = CapabilitiesAdvertisePdu(vec![
            RawCapabilitySet::new(CapabilityVersion(0xb_0000), vec![0; 4]),
            RawCapabilitySet::new(CapabilityVersion::V8, vec![0; 4]),
        ]);
        assert!(matches!(choose(&unknown), Ok(CapabilitySet::V8 { .. })));
    }

    #[test]
    fn acknowledgements_count_frames_in_flight_and_may_be_suspended() {
        let (mut server, mut rx) = processor(CompressionMode::Never);
        let link = ready(&mut server, &mut rx);
        assert_eq!(link.in_flight(), Some(0));
        let ids: Vec<u32> = (0..3).map(|_| link.next_frame()).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(link.in_flight(), Some(3));
        let ack = |id, depth| {
            bytes(GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
                queue_depth: depth,
                frame_id: id,
                total_frames_decoded: id,
            }))
        };
        assert!(server
            .process(7, &ack(2, QueueDepth::Unavailable))
            .unwrap()
            .is_empty());
        assert_eq!(link.in_flight(), Some(1));
        assert_eq!(events(&mut rx), [GfxEvent::Acknowledged { frame_id: 2 }]);
        // The same frame again, or an older one: nothing new, no harm.
        server.process(7, &ack(2, QueueDepth::Unavailable)).unwrap();
        server.process(7, &ack(1, QueueDepth::Unavailable)).unwrap();
        assert!(events(&mut rx).is_empty());
        // Suspended: the session no longer counts on acknowledgements …
        server.process(7, &ack(3, QueueDepth::Suspend)).unwrap();
        assert_eq!(link.in_flight(), None);
        for _ in 0..100 {
            link.next_frame();
        }
        assert_eq!(link.in_flight(), None);
        // … until a normal one comes.
        server
            .process(7, &ack(100, QueueDepth::AvailableBytes(10)))
            .unwrap();
        assert_eq!(link.in_flight(), Some(3));
        assert!(!events(&mut rx)
            .iter()
            .any(|e| matches!(e, GfxEvent::Failed(_))));
    }

    #[test]
    fn malformed_or_unexpected_pdus_stop_the_channel_and_nothing_else() {
        let valid_caps = bytes(GfxPdu::CapabilitiesAdvertise(xfreerdp_caps()));
        let ack = |id| {
            bytes(GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
                queue_depth: QueueDepth::Unavailable,
                frame_id: id,
                total_frames_decoded: 0,
            }))
        };
        let mut short_length = valid_caps.clone();
        short_length[4..8].copy_from_slice(&7u32.to_le_bytes());
        let mut long_length = valid_caps.clone();
        long_length[4..8].copy_from_slice(&1000u32.to_le_bytes());
        let mut unknown_cmd = ack(1);
        unknown_cmd[0] = 0x77;
        let bad_set = bytes(GfxPdu::CapabilitiesAdvertise(CapabilitiesAdvertisePdu(
            vec![RawCapabilitySet::new(CapabilityVersion::V10_7, vec![1])],
        )));
        let mut truncated_set = valid_caps.clone();
        truncated_set.truncate(30);
        truncated_set[4..8].copy_from_slice(&30u32.to_le_bytes());
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("empty message", vec![vec![]]),
            ("truncated header", vec![valid_caps[..5].to_vec()]),
            ("length below the header", vec![short_length]),
            ("length past the message", vec![long_length]),
            ("unknown command", vec![valid_caps.clone(), unknown_cmd]),
            ("capability set too short", vec![bad_set]),
            ("capability list cut off", vec![truncated_set]),
            (
                "no known version",
                vec![bytes(GfxPdu::CapabilitiesAdvertise(
                    CapabilitiesAdvertisePdu(vec![RawCapabilitySet::new(
                        CapabilityVersion(0x1234),
                        vec![],
                    )]),
                ))],
            ),
            (
                "no capability sets",
                vec![bytes(GfxPdu::CapabilitiesAdvertise(
                    CapabilitiesAdvertisePdu(vec![]),
                ))],
            ),
            ("acknowledgement before capabilities", vec![ack(1)]),
            (
                "acknowledgement of a frame never sent",
                vec![valid_caps.clone(), ack(5)],
            ),
            (
                "a server-to-client PDU",
                vec![
                    valid_caps.clone(),
                    bytes(GfxPdu::EndFrame(EndFramePdu { frame_id: 1 })),
                ],
            ),
        ];
        for (name, messages) in cases {
            let (mut server, mut rx) = processor(CompressionMode::Never);
            server.start(3).unwrap();
            let mut failed = Vec::new();
            for m in &messages {
                // Never an error for the DVC layer (which would only log it).
                server.process(3, m).unwrap();
                failed.extend(events(&mut rx).into_iter().filter_map(|e| match e {
                    GfxEvent::Failed(reason) => Some(reason),
                    _ => None,
                }));
            }
            assert_eq!(failed.len(), 1, "{name}: {failed:?}");
            if name == "a server-to-client PDU" {
                assert!(failed[0].contains("unexpected End Frame"), "{failed:?}");
            }
            // Stopped for good: even a valid advertisement is ignored now.
            assert!(server.process(3, &valid_caps).unwrap().is_empty(), "{name}");
            assert!(events(&mut rx).is_empty(), "{name}");
            // Closing the stopped channel reports nothing more.
            server.close(3);
            assert!(events(&mut rx).is_empty(), "{name}");
        }
        // The client closing a working channel is reported once.
        let (mut server, mut rx) = processor(CompressionMode::Never);
        ready(&mut server, &mut rx);
        server.close(7);
        assert!(matches!(&events(&mut rx)[..], [GfxEvent::Failed(_)]));
    }

    #[test]
    fn cache_import_offers_are_declined_and_qoe_reports_ignored() {
        use ironrdp_egfx::pdu::{CacheEntryMetadata, CacheImportOfferPdu, QoeFrameAcknowledgePdu};
        let (mut server, mut rx) = processor(CompressionMode::Auto);
        ready(&mut server, &mut rx);
        let offer = bytes(GfxPdu::CacheImportOffer(CacheImportOfferPdu {
            cache_entries: vec![CacheEntryMetadata {
                cache_key: 1,
                bitmap_len: 64,
            }],
        }));
        let qoe = bytes(GfxPdu::QoeFrameAcknowledge(QoeFrameAcknowledgePdu {
            frame_id: 0,
            timestamp: 0,
            time_diff_se: 0,
            time_diff_dr: 0,
        }));
        let out = server.process(7, &[offer, qoe].concat()).unwrap();
        // (Decoded with a fresh decompressor: the confirm before it was in Auto mode too.)
        let wire = ironrdp_core::encode_vec(out[0].as_ref()).unwrap();
        let mut plain = Vec::new();
        let mut zgfx = zgfx::Decompressor::new();
        // The history must hold the confirm first, as the client's does.
        let confirm = GfxPdu::CapabilitiesConfirm(CapabilitiesConfirmPdu::from_typed(
            &choose(&xfreerdp_caps()).unwrap(),
        ));
        zgfx.decompress(&zgfx::wrap_uncompressed(&bytes(confirm)), &mut plain)
            .unwrap();
        plain.clear();
        zgfx.decompress(&wire, &mut plain).unwrap();
        assert_eq!(
            parse(&plain).unwrap(),
            vec![GfxPdu::CacheImportReply(CacheImportReplyPdu {
                cache_slots: vec![]
            })]
        );
        assert!(events(&mut rx).is_empty());
    }
}
