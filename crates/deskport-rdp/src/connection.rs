//! One client connection, from the X.224 Connection Request to the end of the session.
//!
//! The connection sequence (MS-RDPBCGR 1.3.1.1) is ironrdp-acceptor's state machine, stepped
//! here rather than through its helpers, for three reasons:
//! - a negotiation failure (RDP_NEG_FAILURE: HYBRID_REQUIRED_BY_SERVER, SSL_REQUIRED_BY_SERVER)
//!   that the acceptor encodes is written to the client before the connection closes, so a
//!   client is never dropped silently;
//! - NLA runs against deskport's account store, per user ([`crate::credssp`]);
//! - in TLS mode the Client Info PDU's credentials are checked before the acceptor goes on,
//!   and a refusal is a Set Error Info PDU, not a dropped connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deskport_policy::throttle::Throttle;
use ironrdp_acceptor::{Acceptor, AcceptorState, DesktopSize};
use ironrdp_async::{Framed as AsyncFramed, FramedWrite};
use ironrdp_connector::{state_downcast, Sequence as _};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::gcc::ClientEarlyCapabilityFlags;
use ironrdp_pdu::mcs::SendDataRequest;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::rdp::capability_sets::{self as caps, CapabilitySet};
use ironrdp_pdu::rdp::client_info::{ClientInfoFlags, CompressionType};
use ironrdp_pdu::rdp::ClientInfoPdu;
use ironrdp_pdu::x224::X224;
use ironrdp_tokio::TokioFramed;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::accounts::Accounts;
use crate::channels::Channels;
use crate::credssp::{self, NlaOutcome};
use crate::encode::ClientCaps;
use crate::fixup::Fixups;
use crate::session::{self, End, SessionParams};
use crate::tls::TlsIdentity;
use deskport_desktop::DesktopProvider;

/// Everything connections share.
#[derive(Debug)]
pub struct Shared {
    pub accounts: crate::AccountStore,
    pub tls: TlsIdentity,
    pub desktops: Arc<dyn DesktopProvider>,
    pub throttle: Arc<Throttle>,
    pub frame_interval: Duration,
    /// How screen updates are coded.
    pub codec: crate::encode::Codec,
    /// Bulk-compress screen updates for clients that offer it (MPPC, NCRUSH or XCRUSH).
    pub bulk_compression: bool,
    /// The connection sequence must complete within this time.
    pub handshake_timeout: Duration,
    /// A client must have logged on (NLA, or the Client Info in TLS mode) within this time of
    /// connecting: a stranger's share of the server's attention is short.
    pub logon_timeout: Duration,
    /// The server's counters (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Offer sound (`rdpsnd`) in this coding; `None`: no sound channel.
    pub sound: Option<crate::channels::sound::SoundCodec>,
    /// Take the client's drives (`rdpdr`), each request answered within this time; `None`:
    /// no drive channel.
    pub drives: Option<Duration>,
}

/// The per-connection view of the two switches at the time the client connected.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub nla_only: bool,
}

/// The server's capability sets (MS-RDPBCGR 2.2.7): fast-path output, 32-bit bitmaps, the
/// drawing orders the bitmap path sends (ScrBlt, OpaqueRect through PatBlt's entry,
/// MultiOpaqueRect: xfreerdp drops every order the server's set leaves out), Surface Frame
/// Markers and Frame Acknowledge (flow control on the classic path), fast-path and Unicode
/// input.
fn capabilities(size: DesktopSize) -> Vec<CapabilitySet> {
    let mut order = caps::Order::new(
        caps::OrderFlags::NEGOTIATE_ORDER_SUPPORT | caps::OrderFlags::ZERO_BOUNDS_DELTAS_SUPPORT,
        caps::OrderSupportExFlags::empty(),
        2048,
        224,
    );
    for index in [
        caps::OrderSupportIndex::ScrBlt,
        caps::OrderSupportIndex::PatBlt,
        caps::OrderSupportIndex::MultiOpaqueRect,
    ] {
        order.set_support_flag(index, true);
    }
    vec![
        CapabilitySet::General(caps::General {
            extra_flags: caps::GeneralExtraFlags::FASTPATH_OUTPUT_SUPPORTED
                | caps::GeneralExtraFlags::NO_BITMAP_COMPRESSION_HDR,
            ..Default::default()
        }),
        CapabilitySet::Bitmap(caps::Bitmap {
            pref_bits_per_pix: 32,
            desktop_width: size.width,
            desktop_height: size.height,
            desktop_resize_flag: true,
            drawing_flags: caps::BitmapDrawingFlags::empty(),
        }),
        CapabilitySet::Order(order),
        CapabilitySet::Pointer(caps::Pointer {
            color_pointer_cache_size: 32,
            pointer_cache_size: 32,
        }),
        CapabilitySet::Input(caps::Input {
            input_flags: caps::InputFlags::SCANCODES
                | caps::InputFlags::MOUSEX
                | caps::InputFlags::FASTPATH_INPUT
                | caps::InputFlags::UNICODE
                | caps::InputFlags::FASTPATH_INPUT_2,
            keyboard_layout: 0,
            keyboard_type: None,
            keyboard_subtype: 0,
            keyboard_function_key: 12,
            keyboard_ime_filename: String::new(),
        }),
        CapabilitySet::VirtualChannel(caps::VirtualChannel {
            flags: caps::VirtualChannelFlags::NO_COMPRESSION,
            chunk_size: None,
        }),
        CapabilitySet::MultiFragmentUpdate(caps::MultifragmentUpdate {
            max_request_size: 8 * 1024 * 1024,
        }),
        CapabilitySet::SurfaceCommands(caps::SurfaceCommands {
            flags: caps::CmdFlags::FRAME_MARKER,
        }),
        CapabilitySet::FrameAcknowledge(caps::FrameAcknowledge {
            max_unacknowledged_frame_count: 2,
        }),
    ]
}

/// What the client's Confirm Active says about drawing orders and frame acknowledgement.
fn client_orders_and_frames(
    capabilities: &[CapabilitySet],
) -> (crate::encode::orders::OrderKinds, Option<u32>) {
    let orders = capabilities
        .iter()
        .find_map(|c| match c {
            CapabilitySet::Order(order) => {
                Some(crate::encode::orders::OrderKinds::from_capability(order))
            }
            _ => None,
        })
        .unwrap_or_default();
    let frame_marker = capabilities.iter().any(|c| {
        matches!(c, CapabilitySet::SurfaceCommands(s)
            if s.flags.contains(caps::CmdFlags::FRAME_MARKER))
    });
    let frame_acknowledge = capabilities
        .iter()
        .find_map(|c| match c {
            CapabilitySet::FrameAcknowledge(f) => Some(f.max_unacknowledged_frame_count),
            _ => None,
        })
        .filter(|_| frame_marker);
    (orders, frame_acknowledge)
}

/// One step of the sequence; what the acceptor encoded is written even when the step fails
/// (that is how a negotiation failure reaches the client).
async fn step<S>(
    framed: &mut AsyncFramed<S>,
    acceptor: &mut Acceptor,
    buf: &mut WriteBuf,
    input: Option<&[u8]>,
) -> anyhow::Result<()>
where
    S: FramedWrite,
{
    buf.clear();
    let result = match input {
        Some(pdu) => acceptor.step(pdu, None, buf),
        None => acceptor.step_no_input(buf),
    };
    if buf.filled_len() > 0 {
        framed.write_all(buf.filled()).await?;
    }
    result.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The fuzzing oracle of the pre-authentication path a stranger reaches first (see `fuzz/`):
/// the bytes as a client's first PDUs, cut by the acceptor's own hints and stepped as
/// `handshake` steps them, under both switches. Nothing panics, and a negotiation that reaches
/// the security upgrade picked a protocol the server offered (or none, which is refused).
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    for nla_only in [true, false] {
        let mut offered = SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX;
        if !nla_only {
            offered |= SecurityProtocol::SSL;
        }
        if let Some(protocol) = negotiate(data, offered) {
            assert!(
                protocol.is_empty() || offered.contains(protocol),
                "{protocol:?} was not offered ({offered:?})"
            );
        }
    }
}

/// The fuzzing oracle of what a stranger reaches after TLS in TLS mode, before any logon:
/// MCS Connect Initial (the GCC blocks), Erect Domain, Attach User, the channel joins, and
/// the Client Info that carries the credentials (decoded as `handshake` decodes it), then
/// licensing, capabilities and finalization — `data` as those PDUs, cut by the acceptor's
/// hints and stepped as `handshake` steps them, with the channels the server offers. Nothing
/// panics.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle_after_tls(data: &[u8]) {
    let _ = after_tls(data);
}

/// Steps an acceptor that negotiated TLS through `data` as the client's PDUs after the TLS
/// handshake; how many PDUs it took, and whether it reached the end of the sequence.
#[cfg(any(test, feature = "fuzzing"))]
fn after_tls(data: &[u8]) -> (usize, bool) {
    const TLS_REQUEST: [u8; 19] = [
        0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x08, 0x00, 0x01, 0, 0, 0,
    ];
    let size = DesktopSize {
        width: 1024,
        height: 768,
    };
    let mut acceptor = Acceptor::new(SecurityProtocol::SSL, size, capabilities(size), None);
    let _attached = crate::channels::attach(&mut acceptor, true, Some(Default::default()), true);
    let mut buf = WriteBuf::new();
    let mut rest: &[u8] = &TLS_REQUEST;
    let mut taken = 0;
    for _ in 0..64 {
        match state(&acceptor) {
            Some(AcceptorState::Accepted { .. }) => return (taken, true),
            Some(AcceptorState::SecurityUpgrade { .. }) => {
                acceptor.mark_security_upgrade_as_done();
                rest = data;
                continue;
            }
            _ => {}
        }
        let client_info = matches!(
            state(&acceptor),
            Some(AcceptorState::SecureSettingsExchange { .. })
        );
        buf.clear();
        let Some(input) = next_input(&acceptor, &mut rest) else {
            return (taken, false);
        };
        let stepped = match input {
            Some(pdu) => {
                taken += 1;
                if client_info {
                    let _ = client_wants(pdu);
                    let _ = client_credentials(pdu);
                }
                acceptor.step(pdu, None, &mut buf)
            }
            None => acceptor.step_no_input(&mut buf),
        };
        if stepped.is_err() {
            return (taken, false);
        }
    }
    (taken, false)
}

/// Steps a fresh acceptor offering `offered` through `data` as the client's first PDUs, up
/// to the security upgrade: the protocol it picked, if it got there.
#[cfg(any(test, feature = "fuzzing"))]
fn negotiate(data: &[u8], offered: SecurityProtocol) -> Option<SecurityProtocol> {
    let size = DesktopSize {
        width: 1024,
        height: 768,
    };
    let mut acceptor = Acceptor::new(offered, size, capabilities(size), None);
    let mut buf = WriteBuf::new();
    let mut rest = data;
    for _ in 0..16 {
        if let Some(protocol) = negotiated(&acceptor) {
            return Some(protocol);
        }
        buf.clear();
        let stepped = match next_input(&acceptor, &mut rest)? {
            Some(pdu) => acceptor.step(pdu, None, &mut buf),
            None => acceptor.step_no_input(&mut buf),
        };
        stepped.ok()?;
    }
    None
}

/// What the acceptor takes next from `rest`, cut by its own hint as `handshake` reads it:
/// `Some(Some(pdu))` (taken off `rest`), `Some(None)` when it is the acceptor's turn to speak,
/// `None` when `rest` does not hold a whole PDU.
#[cfg(any(test, feature = "fuzzing"))]
fn next_input<'a>(acceptor: &Acceptor, rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let Some(hint) = acceptor.next_pdu_hint() else {
        return Some(None);
    };
    match hint.find_size(rest) {
        Ok(Some((_, size))) if size > 0 && size <= rest.len() => {
            let (pdu, after) = rest.split_at(size);
            *rest = after;
            Some(Some(pdu))
        }
        _ => None,
    }
}

/// The security protocol negotiated, once the acceptor waits for the security upgrade.
/// (`Acceptor::reached_security_upgrade` gives the protocols offered, not the one chosen.)
fn negotiated(acceptor: &Acceptor) -> Option<SecurityProtocol> {
    match state(acceptor) {
        Some(AcceptorState::SecurityUpgrade { protocol, .. }) => Some(*protocol),
        _ => None,
    }
}

fn state(acceptor: &Acceptor) -> Option<&AcceptorState> {
    state_downcast::<AcceptorState>(acceptor.state())
}

/// Serves one connection; returns when it ends. Errors are the connection's, for the log.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    close: watch::Receiver<Option<String>>,
    handshake_slot: crate::admit::HandshakeSlot,
) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let accounts = shared.accounts.current();
    let (width, height) = shared.desktops.initial_size((0, 0));
    let size = DesktopSize { width, height };
    let mut security = SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX;
    if !admission.nla_only {
        security |= SecurityProtocol::SSL;
    }
    let mut acceptor = Acceptor::new(security, size, capabilities(size), None);
    // The clipboard for clients that join it; Display Control where the desktop can follow
    // the client's window.
    let resizable = shared.desktops.can_resize();
    let attached = crate::channels::attach(
        &mut acceptor,
        resizable,
        shared.sound,
        shared.drives.is_some(),
    );
    if shared.desktops.honors_client_size() {
        acceptor.set_honor_client_desktop_size(Some(DesktopSize {
            width: 8192,
            height: 8192,
        }));
    }
    let handshake = handshake(&shared, tcp, peer, &mut acceptor, accounts, admission);
    let Handshake {
        framed,
        account,
        security,
        wants,
    } = match tokio::time::timeout(shared.handshake_timeout, handshake).await {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            if e.is::<LogonTimeout>() {
                shared.metrics.logon_timed_out();
            }
            return Err(e);
        }
        Err(_) => anyhow::bail!(
            "the connection sequence did not complete within {:?}",
            shared.handshake_timeout
        ),
    };
    // Logged on: the address's handshake share is free again.
    drop(handshake_slot);
    let result = acceptor
        .get_result()
        .context("the acceptor finished without a result")?;
    let bpp = result
        .capabilities
        .iter()
        .find_map(|c| match c {
            CapabilitySet::Bitmap(b) => Some(b.pref_bits_per_pix),
            _ => None,
        })
        .unwrap_or(32);
    // The size the client works at: what its Bitmap capability confirms.
    let negotiated = result
        .capabilities
        .iter()
        .find_map(|c| match c {
            CapabilitySet::Bitmap(b) if b.desktop_width > 0 && b.desktop_height > 0 => {
                Some((b.desktop_width, b.desktop_height))
            }
            _ => None,
        })
        .unwrap_or((width, height));
    // The client's keyboard layout, from its Input capability (0: it did not say).
    let keyboard_layout = result.capabilities.iter().find_map(|c| match c {
        CapabilitySet::Input(input) if input.keyboard_layout != 0 => Some(input.keyboard_layout),
        _ => None,
    });
    let desktop = {
        let (desktops, account) = (shared.desktops.clone(), account.clone());
        let remote = peer.ip().to_canonical();
        tokio::task::spawn_blocking(move || {
            let desktop = desktops.desktop_for(&account, negotiated, Some(remote))?;
            if let Some(klid) = keyboard_layout {
                // Keys still arrive without it, in the session's own layout.
                if let Err(e) = desktop.set_keyboard_layout(klid) {
                    tracing::warn!(account, error = %e, "The session keeps its keyboard layout");
                }
            }
            anyhow::Ok(desktop)
        })
        .await??
    };
    let no_compression_header = result.capabilities.iter().any(|c| {
        matches!(c, CapabilitySet::General(g)
            if g.extra_flags.contains(caps::GeneralExtraFlags::NO_BITMAP_COMPRESSION_HDR))
    });
    let compression = wants.compression.filter(|_| shared.bulk_compression);
    // Clients of RDP 7 and later (mstsc, FreeRDP, IronRDP) decode planar tiles without an
    // alpha plane and bitmaps of any depth in a 32-bit session; rdesktop decodes only planar
    // tiles with one and paints every bitmap at the session's depth. The tell: an early
    // capability of RDP 7 or later that rdesktop 1.9 does not announce (it has
    // SUPPORT_ERR_INFO_PDU and, with `-a 32`, WANT_32_BPP_SESSION), or bitmap codecs.
    let modern = result.client_early_capability_flags.intersects(
        ClientEarlyCapabilityFlags::VALID_CONNECTION_TYPE
            | ClientEarlyCapabilityFlags::SUPPORT_NET_CHAR_AUTODETECT
            | ClientEarlyCapabilityFlags::SUPPORT_MONITOR_LAYOUT_PDU
            | ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL,
    ) || result
        .capabilities
        .iter()
        .any(|c| matches!(c, CapabilitySet::BitmapCodecs(_)));
    let planar_alpha = !modern;
    let new_pointer = result
        .capabilities
        .iter()
        .any(|c| matches!(c, CapabilitySet::Pointer(p) if p.pointer_cache_size > 0));
    let (orders, frame_acknowledge) = client_orders_and_frames(&result.capabilities);
    // The graphics pipeline, for clients that ask for it in their Core Data.
    let gfx = result
        .client_early_capability_flags
        .contains(ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL);
    let keyboard_layout = keyboard_layout.map(|k| format!("{k:#010x}"));
    tracing::info!(%peer, account, security, bpp, ?compression, planar_alpha, mixed_depth = modern, ?orders, ?frame_acknowledge, gfx, early = ?result.client_early_capability_flags, keyboard_layout, "Session started");
    shared.metrics.session_started();
    let (reader, writer) = ironrdp_tokio::split_tokio_framed(framed);
    let encoder = crate::encode::for_client(
        ClientCaps {
            bpp,
            no_compression_header,
            planar_alpha,
            mixed_depth: modern,
            compression,
            orders,
            frame_acknowledge,
        },
        shared.codec,
    );
    let channels = Channels::new(
        result.static_channels,
        result.user_channel_id,
        attached,
        &*desktop,
        gfx,
        !wants.no_sound,
        shared.drives.unwrap_or_default(),
    );
    let params = SessionParams {
        desktop,
        io_channel_id: result.io_channel_id,
        encoder,
        new_pointer,
        frame_interval: shared.frame_interval,
        backlog: result.input_events,
        channels,
        acceptor: resizable.then_some(acceptor),
    };
    let end = session::run(reader, writer.into_inner_no_leftover(), params, close).await?;
    match end {
        End::Client => tracing::info!(%peer, account, "Session ended by the client"),
        End::Server(reason) => {
            tracing::info!(%peer, account, reason, "Session closed by the server")
        }
    }
    Ok(())
}

type Framed = TokioFramed<Fixups<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The client did not log on within the logon timeout.
#[derive(Debug, thiserror::Error)]
#[error("no logon within {0:?} of connecting")]
struct LogonTimeout(Duration);

/// `fut`, unless the logon `deadline` passes first.
async fn before_logon<T>(
    deadline: (tokio::time::Instant, Duration),
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout_at(deadline.0, fut)
        .await
        .map_err(|_| LogonTimeout(deadline.1).into())
}

/// The connection sequence. `Ok(None)`: the client was refused (and told so). Everything
/// before the logon (negotiation, TLS, NLA, the Client Info in TLS mode) must be done within
/// the logon timeout.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &mut Acceptor,
    accounts: Arc<Accounts>,
    admission: Admission,
) -> anyhow::Result<Option<Handshake>> {
    let mut buf = WriteBuf::new();
    let ip = peer.ip().to_canonical();
    let ip_key = format!("ip:{ip}");
    let deadline = (
        tokio::time::Instant::now() + shared.logon_timeout,
        shared.logon_timeout,
    );

    // Negotiation, in the clear.
    let mut framed = TokioFramed::new(tcp);
    let protocol = loop {
        if let Some(protocol) = negotiated(acceptor) {
            break protocol;
        }
        let input = match acceptor.next_pdu_hint() {
            Some(hint) => Some(before_logon(deadline, framed.read_by_hint(hint)).await??),
            None => None,
        };
        let stepped = before_logon(
            deadline,
            step(&mut framed, acceptor, &mut buf, input.as_deref()),
        )
        .await?;
        if let Err(e) = stepped {
            tracing::info!(%peer, error = %e, nla_only = admission.nla_only, "Refused at negotiation");
            return Ok(None);
        }
    };
    if protocol.is_empty() {
        tracing::info!(%peer, "Refused: standard RDP security is not offered");
        return Ok(None);
    }

    // TLS.
    let tcp = framed.into_inner_no_leftover();
    let tls = before_logon(deadline, shared.tls.acceptor.accept(tcp))
        .await?
        .context("TLS handshake")?;
    acceptor.mark_security_upgrade_as_done();
    let mut framed = TokioFramed::new(Fixups::new(tls));

    // NLA.
    let mut account = None;
    let mut wants = ClientWants::default();
    let nla = acceptor.should_perform_credssp();
    if nla {
        let hybrid_ex = matches!(state(acceptor), Some(AcceptorState::Credssp { protocol, .. }) if protocol.contains(SecurityProtocol::HYBRID_EX));
        let outcome = before_logon(
            deadline,
            credssp::authenticate(
                &mut framed,
                accounts.clone(),
                shared.throttle.clone(),
                ip_key.clone(),
                shared.tls.public_key.clone(),
                hybrid_ex,
            ),
        )
        .await??;
        match outcome {
            NlaOutcome::Authenticated { account: name } => {
                let key = format!("user:{}", name.to_ascii_lowercase());
                if let Err(wait) = shared
                    .throttle
                    .check(std::slice::from_ref(&key), Instant::now())
                {
                    tracing::warn!(%peer, account = name, wait, "Logon refused: the account is locked out");
                    return Ok(None);
                }
                shared.throttle.success(&key);
                account = Some(name);
                acceptor.mark_credssp_as_done();
            }
            NlaOutcome::Denied {
                user, locked: true, ..
            } => {
                tracing::warn!(%peer, user, "Logon refused: the account is locked out");
                return Ok(None);
            }
            NlaOutcome::Denied { user, reason, .. } => {
                logon_failed(shared, peer, user.as_deref(), &reason);
                return Ok(None);
            }
        }
    }

    // The rest of the sequence: channels, Client Info (checked in TLS mode), licensing,
    // capabilities, finalization.
    loop {
        if matches!(state(acceptor), Some(AcceptorState::Accepted { .. })) {
            break;
        }
        let client_info = matches!(
            state(acceptor),
            Some(AcceptorState::SecureSettingsExchange { .. })
        );
        let check_client_info = account.is_none() && client_info;
        let input = match acceptor.next_pdu_hint() {
            Some(hint) if account.is_none() => {
                Some(before_logon(deadline, framed.read_by_hint(hint)).await??)
            }
            Some(hint) => Some(framed.read_by_hint(hint).await?),
            None => None,
        };
        if client_info {
            wants = input.as_deref().and_then(client_wants).unwrap_or_default();
        }
        if check_client_info {
            if let Some(pdu) = &input {
                match tls_logon(shared, &accounts, peer, &ip_key, pdu) {
                    Ok(name) => account = Some(name),
                    Err(reason) => {
                        // Tell the client (Set Error Info), then close.
                        buf.clear();
                        if acceptor.encode_access_denied(&mut buf).unwrap_or(0) > 0 {
                            let _ = framed.write_all(buf.filled()).await;
                        }
                        tracing::info!(%peer, reason, "Refused at logon");
                        return Ok(None);
                    }
                }
            }
        }
        step(&mut framed, acceptor, &mut buf, input.as_deref()).await?;
    }
    let account = account.context("the connection sequence ended without a logon")?;
    if framed.get_inner().0.waits_for_server() {
        tracing::debug!(%peer, "Answered finalization early (client waits for the server)");
    }
    let security = if nla { "nla" } else { "tls" };
    Ok(Some(Handshake {
        framed,
        account,
        security,
        wants,
    }))
}

/// A completed connection sequence.
struct Handshake {
    framed: Framed,
    account: String,
    security: &'static str,
    /// What the client's Client Info asks for.
    wants: ClientWants,
}

/// What a client's Client Info PDU asks for besides the logon.
#[derive(Debug, Default, Clone, Copy)]
struct ClientWants {
    /// The best bulk compression it offers (INFO_COMPRESSION and its type), if any.
    compression: Option<CompressionType>,
    /// It wants no sound (INFO_NOAUDIOPLAYBACK, or INFO_REMOTECONSOLEAUDIO: leave it at the
    /// server). Such clients may still join `rdpsnd` (xfreerdp `/audio-mode:2` does, with a
    /// device that discards it): nothing is captured or sent for them.
    no_sound: bool,
}

/// What the Client Info PDU `pdu` asks for; `None` if it is none.
fn client_wants(pdu: &[u8]) -> Option<ClientWants> {
    let request: X224<SendDataRequest<'_>> = ironrdp_core::decode(pdu).ok()?;
    let info: ClientInfoPdu = ironrdp_core::decode(request.0.user_data.as_ref()).ok()?;
    let flags = info.client_info.flags;
    Some(ClientWants {
        compression: flags
            .contains(ClientInfoFlags::COMPRESSION)
            .then_some(info.client_info.compression_type),
        no_sound: flags
            .intersects(ClientInfoFlags::NO_AUDIO_PLAYBACK | ClientInfoFlags::REMOTE_CONSOLE_AUDIO),
    })
}

fn logon_failed(shared: &Shared, peer: SocketAddr, user: Option<&str>, reason: &str) {
    let mut keys = vec![format!("ip:{}", peer.ip().to_canonical())];
    if let Some(u) = user {
        keys.push(format!("user:{}", u.to_ascii_lowercase()));
    }
    tracing::warn!(%peer, user, reason, "Logon failed");
    if let Some(lock) = shared.throttle.failure(&keys, Instant::now()) {
        tracing::warn!(%peer, user, seconds = lock.as_secs(), "Logons locked out after repeated failures");
    }
}

/// The credentials of a Client Info PDU.
fn client_credentials(pdu: &[u8]) -> Result<ironrdp_pdu::rdp::client_info::Credentials, String> {
    let request: X224<SendDataRequest<'_>> =
        ironrdp_core::decode(pdu).map_err(|e| format!("undecodable Client Info: {e}"))?;
    let info: ClientInfoPdu = ironrdp_core::decode(request.0.user_data.as_ref())
        .map_err(|e| format!("undecodable Client Info: {e}"))?;
    Ok(info.client_info.credentials)
}

/// Checks the credentials of a TLS-mode Client Info PDU; `Ok(account)` or why not.
fn tls_logon(
    shared: &Shared,
    accounts: &Accounts,
    peer: SocketAddr,
    ip_key: &str,
    pdu: &[u8],
) -> Result<String, String> {
    let credentials = client_credentials(pdu)?;
    let user = credentials.username.trim().to_owned();
    if user.is_empty() {
        logon_failed(shared, peer, None, "no user name given");
        return Err("no user name given (give one with the client, e.g. -u NAME)".to_owned());
    }
    let key = format!("user:{}", user.to_ascii_lowercase());
    if let Err(wait) = shared
        .throttle
        .check(&[key, ip_key.to_owned()], Instant::now())
    {
        return Err(format!(
            "account {user:?} or this address is locked out for {wait} s"
        ));
    }
    match accounts.get(&user) {
        Some(account) if accounts.verify(&user, &credentials.password) => {
            shared
                .throttle
                .success(&format!("user:{}", user.to_ascii_lowercase()));
            Ok(account.name.clone())
        }
        _ => {
            let reason = if credentials.password.is_empty() {
                "no password given"
            } else {
                "wrong user name or password"
            };
            logon_failed(shared, peer, Some(&user), reason);
            Err(reason.to_owned())
        }
    }
}

#[cfg(test)]
mod after_tls_tests {
    use super::*;
    use ironrdp_connector::{ClientConnector, Config, Credentials, Sequence};
    use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};

    /// What IronRDP's client (the connector `deskport connect` uses) sends after TLS, up to
    /// the end of the sequence, talking to the same acceptor in memory.
    fn client_sequence_after_tls() -> Vec<u8> {
        let config = Config {
            desktop_size: DesktopSize {
                width: 1024,
                height: 768,
            },
            monitor_layout: None,
            desktop_scale_factor: 0,
            desktop_physical_size: None,
            desktop_orientation: None,
            device_scale_factor: None,
            monitor_extended_layout: None,
            relative_mouse_input: false,
            enable_tls: true,
            enable_credssp: false,
            enable_standard_rdp_security: false,
            credentials: Credentials::UsernamePassword {
                username: "alice".to_owned(),
                password: "a password".to_owned(),
            },
            domain: None,
            client_build: 0,
            client_name: "fuzzseed".to_owned(),
            keyboard_type: ironrdp_pdu::gcc::KeyboardType::IBM_ENHANCED,
            keyboard_subtype: 0,
            keyboard_functional_keys_count: 12,
            keyboard_layout: 0x407,
            connection_type: ironrdp_pdu::gcc::ConnectionType::Lan,
            ime_file_name: String::new(),
            bitmap: None,
            dig_product_id: String::new(),
            client_dir: String::new(),
            alternate_shell: String::new(),
            work_dir: String::new(),
            remote_application_mode: false,
            rail_support_level: ironrdp_pdu::rdp::capability_sets::RailSupportLevel::empty(),
            platform: ironrdp_pdu::rdp::capability_sets::MajorPlatformType::UNIX,
            hardware_id: None,
            request_data: None,
            autologon: true,
            enable_audio_playback: false,
            enable_audio_capture: false,
            performance_flags: PerformanceFlags::default(),
            license_cache: None,
            timezone_info: TimezoneInfo::default(),
            compression_type: Some(CompressionType::Rdp61),
            enable_server_pointer: true,
            pointer_software_rendering: false,
            multitransport_flags: None,
            support_dyn_vc_gfx_protocol: false,
        };
        let mut client = ClientConnector::new(config, "127.0.0.1:50000".parse().unwrap());
        let size = DesktopSize {
            width: 1024,
            height: 768,
        };
        let mut server = Acceptor::new(SecurityProtocol::SSL, size, capabilities(size), None);
        let _attached = crate::channels::attach(&mut server, true, Some(Default::default()), true);
        let (mut to_server, mut to_client, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
        let mut upgraded = false;
        let mut out = WriteBuf::new();
        for _ in 0..500 {
            if matches!(state(&server), Some(AcceptorState::Accepted { .. })) {
                return recorded;
            }
            if client.should_perform_security_upgrade() {
                client.mark_security_upgrade_as_done();
            }
            if matches!(state(&server), Some(AcceptorState::SecurityUpgrade { .. })) {
                server.mark_security_upgrade_as_done();
                upgraded = true;
            }
            out.clear();
            match client.next_pdu_hint() {
                None => {
                    client.step_no_input(&mut out).unwrap();
                }
                Some(hint) => {
                    if let Ok(Some((_, n))) = hint.find_size(&to_client) {
                        let pdu: Vec<u8> = to_client.drain(..n).collect();
                        client.step(&pdu, None, &mut out).unwrap();
                    }
                }
            }
            if upgraded {
                recorded.extend_from_slice(out.filled());
            }
            to_server.extend_from_slice(out.filled());
            out.clear();
            match server.next_pdu_hint() {
                None => {
                    server.step_no_input(&mut out).unwrap();
                }
                Some(hint) => {
                    if let Ok(Some((_, n))) = hint.find_size(&to_server) {
                        let pdu: Vec<u8> = to_server.drain(..n).collect();
                        server.step(&pdu, None, &mut out).unwrap();
                    }
                }
            }
            to_client.extend_from_slice(out.filled());
        }
        panic!("the in-memory connection did not complete");
    }

    /// The fuzz oracle steps a real client's sequence after TLS to its end, so the fuzzer
    /// starts from inputs that reach every stage. `DESKPORT_WRITE_FUZZ_SEEDS=DIR` writes the
    /// sequence as the target's seed (`fuzz/corpus/rdp_after_tls/`).
    #[test]
    fn a_real_clients_sequence_after_tls_reaches_the_end() {
        let seed = client_sequence_after_tls();
        let (taken, done) = after_tls(&seed);
        assert!(done, "the oracle stopped after {taken} PDUs");
        assert!(taken >= 8, "{taken}");
        // Cut short anywhere, it stops without reaching the end (and without panicking).
        for cut in [0, 1, seed.len() / 3, seed.len() - 1] {
            assert!(!after_tls(&seed[..cut]).1, "cut at {cut}");
        }
        crate::testing::write_fuzz_seed("rdp_after_tls", "ironrdp-connector-tls", &seed);
    }
}

#[cfg(test)]
mod negotiation_tests {
    use super::*;

    /// An X.224 Connection Request asking for `protocols`.
    fn request(protocols: u32) -> Vec<u8> {
        let mut pdu = vec![
            0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x08, 0x00,
        ];
        pdu.extend_from_slice(&protocols.to_le_bytes());
        pdu
    }

    /// What the fuzz oracle steps through is the real negotiation: a client asking for NLA
    /// gets it, one asking for TLS only gets it only when offered.
    #[test]
    fn negotiation_picks_an_offered_protocol() {
        let nla = SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX;
        assert_eq!(
            negotiate(&request(0x3), nla).map(|p| p.contains(SecurityProtocol::HYBRID)),
            Some(true)
        );
        let tls_only = request(0x1);
        assert_eq!(
            negotiate(&tls_only, nla | SecurityProtocol::SSL),
            Some(SecurityProtocol::SSL)
        );
        assert_eq!(
            negotiate(&tls_only, nla),
            None,
            "TLS only, NLA required: refused"
        );
        assert_eq!(negotiate(&[0x03, 0x00, 0x00], nla), None, "half a header");
    }
}
