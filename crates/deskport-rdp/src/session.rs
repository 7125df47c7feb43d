//! The active session: client input to the desktop, screen changes to the client.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ironrdp_acceptor::{Acceptor, AcceptorState, DesktopSize};
use ironrdp_async::{Framed, FramedRead, FramedWrite};
use ironrdp_connector::{state_downcast, Sequence as _};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::input::fast_path::{FastPathInput, FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::mouse_x::PointerXFlags;
use ironrdp_pdu::input::scan_code;
use ironrdp_pdu::input::{InputEvent, MousePdu};
use ironrdp_pdu::mcs::{
    DisconnectProviderUltimatum, McsMessage, SendDataIndication, SendDataRequest,
};
use ironrdp_pdu::rdp::headers::{
    ServerDeactivateAll, ShareControlHeader, ShareControlPdu, ShareDataPdu,
};
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;
use tokio::sync::watch;

use crate::encode::{Codec, Encoder};
use deskport_desktop::clipboard::Clipboard;
use deskport_desktop::{Button, Desktop, Frame, Input};
use deskport_proto::clipboard::{ClipboardAction, ClipboardSync, FromPeer};
use deskport_proto::next;
use ironrdp_cliprdr::CliprdrServer;
use ironrdp_svc::{server_encode_svc_messages, StaticChannelSet};
use tokio::sync::mpsc::UnboundedReceiver;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client logged off or disconnected.
    Client,
    /// The server closed it (shutdown, Remote Desktop switched off).
    Server(String),
}

/// What the loop needs.
#[derive(Debug)]
pub struct SessionParams {
    pub desktop: Arc<dyn Desktop>,
    pub io_channel_id: u16,
    pub bpp: u16,
    pub codec: Codec,
    /// The client's General capability has NO_BITMAP_COMPRESSION_HDR.
    pub no_compression_header: bool,
    /// Planar tiles carry an alpha plane (for clients that decode only those: rdesktop).
    pub planar_alpha: bool,
    /// The client takes 32-bit New Pointer updates (else 24-bit Color Pointer ones).
    pub new_pointer: bool,
    /// Bulk compression of the updates (the best the client offered), if any.
    pub compression: Option<ironrdp_pdu::rdp::client_info::CompressionType>,
    /// Time between screen checks.
    pub frame_interval: Duration,
    /// Input events the client sent during connection finalization.
    pub backlog: Vec<Vec<u8>>,
    /// The static virtual channels the client joined (cliprdr, drdynvc), and what their
    /// backends report.
    pub channels: Channels,
    /// Screen size changes the client may ask for (desktops that can resize).
    pub resizing: Option<Resizing>,
}

/// What follows a client's request for another screen size: the sizes it asks for, and the
/// acceptor that ran the connection sequence (its Deactivation-Reactivation Sequence
/// announces the new size).
pub struct Resizing {
    pub requests: UnboundedReceiver<(u16, u16)>,
    pub acceptor: Acceptor,
}

impl std::fmt::Debug for Resizing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resizing").finish_non_exhaustive()
    }
}

/// Static virtual channels of a session.
#[derive(Debug)]
pub struct Channels {
    pub set: StaticChannelSet,
    pub user_channel_id: u16,
    /// What the clipboard channel's backend reports.
    pub clipboard: Option<UnboundedReceiver<FromPeer>>,
}

impl Channels {
    /// Whether the clipboard channel is up.
    fn cliprdr_ready(&mut self) -> bool {
        self.set
            .get_by_type_mut::<CliprdrServer>()
            .and_then(|c| c.channel_processor_downcast_mut::<CliprdrServer>())
            .is_some_and(|c| c.is_ready())
    }

    /// Carries out a clipboard action on the channel, appending the messages to `out`.
    fn clipboard(&mut self, action: &ClipboardAction, out: &mut Vec<u8>) {
        let Some(id) = self.set.get_channel_id_by_type::<CliprdrServer>() else {
            return;
        };
        let Some(cliprdr) = self
            .set
            .get_by_type_mut::<CliprdrServer>()
            .and_then(|c| c.channel_processor_downcast_mut::<CliprdrServer>())
        else {
            return;
        };
        let msgs = match deskport_proto::clipboard::perform(cliprdr, action) {
            Ok(msgs) => Vec::from(msgs),
            Err(e) => {
                tracing::debug!(error = %e, "Clipboard channel");
                return;
            }
        };
        match server_encode_svc_messages(msgs, id, self.user_channel_id) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => tracing::debug!(error = %e, "Clipboard channel"),
        }
    }

    /// Starts every channel the client joined (cliprdr: capabilities and monitor ready;
    /// drdynvc: its capabilities); what they send is appended to `out`.
    fn start_all(&mut self, out: &mut Vec<u8>) {
        let user_channel_id = self.user_channel_id;
        for (_, channel, channel_id) in self.set.iter_mut() {
            let Some(channel_id) = channel_id else {
                continue;
            };
            let msgs = match channel.start() {
                Ok(msgs) => msgs,
                Err(e) => {
                    tracing::debug!(error = %e, channel_id, "Channel not started");
                    continue;
                }
            };
            match server_encode_svc_messages(msgs, channel_id, user_channel_id) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => tracing::debug!(error = %e, channel_id, "Channel start not encodable"),
            }
        }
    }

    /// A PDU the client sent on one of the channels; the answers are appended to `out`.
    fn process(&mut self, channel_id: u16, data: &[u8], out: &mut Vec<u8>) {
        let Some(channel) = self.set.get_by_channel_id_mut(channel_id) else {
            tracing::debug!(channel_id, "Data on an unknown channel ignored");
            return;
        };
        let msgs = match channel.process(data) {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::debug!(error = %e, channel_id, "Undecodable channel data ignored");
                return;
            }
        };
        match server_encode_svc_messages(msgs, channel_id, self.user_channel_id) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => tracing::debug!(error = %e, channel_id, "Channel answer not encodable"),
        }
    }
}

/// Runs the session until the client leaves, `close` carries a reason, or the transport fails.
pub async fn run<R, W>(
    mut reader: Framed<R>,
    mut writer: Framed<W>,
    params: SessionParams,
    mut close: watch::Receiver<Option<String>>,
) -> anyhow::Result<End>
where
    R: FramedRead,
    W: FramedWrite,
{
    let mut encoder = Encoder::new(params.bpp, params.codec, params.no_compression_header)
        .with_bulk_compression(params.compression)
        .with_planar_alpha(params.planar_alpha);
    let desktop = params.desktop.clone();
    let mut channels = params.channels;
    let mut out = Vec::new();
    for pdu in &params.backlog {
        let end = handle_input(
            &*desktop,
            params.io_channel_id,
            Action::X224,
            pdu,
            &mut channels,
            &mut out,
        )?;
        if let Some(end) = end {
            return Ok(end);
        }
    }
    // The channels start (the clipboard's X side runs on the session's display).
    channels.start_all(&mut out);
    if !out.is_empty() {
        writer.write_all(&out).await?;
    }
    let local = match desktop.clipboard() {
        Some(Ok(c)) if channels.clipboard.is_some() => Some(c),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "No clipboard for this session");
            None
        }
        _ => None,
    };
    let (owner, mut copied) = match local {
        Some(Clipboard { owner, copied }) => (Some(owner), Some(copied)),
        None => (None, None),
    };
    let mut sync = ClipboardSync::new();
    // The last frame sent: its generation and size always; its pixels only for desktops that
    // cannot say what changed (then tiles are compared).
    let mut previous: Option<Frame> = None;
    let mut sent: Option<(u64, u16, u16)> = None;
    let mut sent_cursor: Option<u32> = None;
    // The serial of the last program's pointer move the client was told about (moves from
    // before this session are not news).
    let mut sent_pointer_move: u64 = desktop.pointer_moved().map_or(0, |(s, _)| s);
    let (mut resize_requests, mut acceptor) = match params.resizing {
        Some(Resizing { requests, acceptor }) => (Some(requests), Some(acceptor)),
        None => (None, None),
    };
    let mut ticker = tokio::time::interval(params.frame_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = next(&mut channels.clipboard) => {
                let Some(event) = event else {
                    channels.clipboard = None;
                    continue;
                };
                let action = sync.from_peer(event);
                clipboard_action(&mut channels, owner.as_ref(), action, &mut writer).await?;
            }
            size = next(&mut resize_requests) => {
                let Some(mut size) = size else {
                    resize_requests = None;
                    continue;
                };
                // A window being dragged asks many times: the last size counts.
                while let Some(later) = resize_requests.as_mut().and_then(|r| r.try_recv().ok()) {
                    size = later;
                }
                if size == desktop.size() {
                    continue;
                }
                let d = desktop.clone();
                let resized = tokio::task::spawn_blocking(move || d.resize(size.0, size.1)).await?;
                let size = match resized {
                    Ok(size) => size,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "The screen keeps its size");
                        continue;
                    }
                };
                let Some(old) = acceptor.take() else {
                    continue;
                };
                let (next_acceptor, backlog) =
                    reactivate(&mut reader, &mut writer, params.io_channel_id, old, &mut channels, size).await?;
                acceptor = Some(next_acceptor);
                out.clear();
                for pdu in &backlog {
                    if let Some(end) = handle_input(&*desktop, params.io_channel_id, Action::X224, pdu, &mut channels, &mut out)? {
                        return Ok(end);
                    }
                }
                if !out.is_empty() {
                    writer.write_all(&out).await?;
                }
                // Everything again, at the new size; the pointer too.
                sent = None;
                previous = None;
                sent_cursor = None;
            }
            text = next(&mut copied) => {
                let Some(text) = text else {
                    copied = None;
                    continue;
                };
                let action = sync.copied(text, channels.cliprdr_ready());
                clipboard_action(&mut channels, owner.as_ref(), action, &mut writer).await?;
            }
            read = reader.read_pdu() => {
                let (action, pdu) = match read {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(End::Client),
                    Err(e) => return Err(e.into()),
                };
                out.clear();
                let end = handle_input(&*desktop, params.io_channel_id, action, &pdu, &mut channels, &mut out)?;
                if let Some(end) = end {
                    return Ok(end);
                }
                if !out.is_empty() {
                    writer.write_all(&out).await?;
                }
            }
            _ = ticker.tick() => {
                let d = desktop.clone();
                let since = sent.map(|s| s.0);
                let (frame, cursor, changes) = tokio::task::spawn_blocking(move || {
                    d.capture()
                        .map(|f| (f, d.cursor(), since.and_then(|g| d.changes_since(g))))
                })
                .await??;
                if let Some(cursor) = cursor.filter(|c| Some(c.serial) != sent_cursor) {
                    out.clear();
                    crate::encode::pointer_update(&cursor, params.new_pointer, &mut out)?;
                    writer.write_all(&out).await?;
                    sent_cursor = Some(cursor.serial);
                }
                // A program moved the pointer: the client's follows (moves from input do not
                // come back).
                if let Some((serial, (x, y))) = desktop.pointer_moved().filter(|m| m.0 > sent_pointer_move) {
                    tracing::debug!(x, y, "A program moved the pointer");
                    out.clear();
                    crate::encode::pointer_position(x, y, &mut out)?;
                    writer.write_all(&out).await?;
                    sent_pointer_move = serial;
                }
                let same_size = sent.is_some_and(|s| (s.1, s.2) == (frame.width, frame.height));
                if same_size && frame.generation != 0 && sent.map(|s| s.0) == Some(frame.generation) {
                    continue;
                }
                let tracked = changes.is_some();
                let rects = match changes {
                    // The desktop knows what changed since the last frame sent.
                    Some(areas) if same_size => {
                        encoder.tiles_covering(&areas, frame.width, frame.height)
                    }
                    _ => encoder.changed_tiles(previous.as_ref(), &frame),
                };
                if !rects.is_empty() {
                    out.clear();
                    encoder.encode(&frame, &rects, &mut out)?;
                    writer.write_all(&out).await?;
                }
                sent = Some((frame.generation, frame.width, frame.height));
                // Keep the pixels only where they are compared next time (holding them would
                // make the desktop copy its screen before updating it).
                previous = (!tracked).then_some(frame);
            }
            changed = close.changed() => {
                let reason = match changed {
                    Ok(()) => close.borrow().clone(),
                    Err(_) => Some("server shutting down".to_owned()),
                };
                if let Some(reason) = reason {
                    // A Disconnect Provider Ultimatum tells the client the server ends it.
                    let bye = X224(McsMessage::DisconnectProviderUltimatum(
                        DisconnectProviderUltimatum::from_reason(ironrdp_pdu::mcs::DisconnectReason::ProviderInitiated),
                    ));
                    if let Ok(bytes) = ironrdp_core::encode_vec(&bye) {
                        let _ = writer.write_all(&bytes).await;
                    }
                    return Ok(End::Server(reason));
                }
            }
        }
    }
}

/// Carries out a clipboard action: on the session's desktop, or on the channel.
async fn clipboard_action<W: FramedWrite>(
    channels: &mut Channels,
    owner: Option<&deskport_desktop::clipboard::ClipboardOwner>,
    action: Option<ClipboardAction>,
    writer: &mut Framed<W>,
) -> anyhow::Result<()> {
    match action {
        None => {}
        Some(ClipboardAction::SetLocal(text)) => {
            if let Some(owner) = owner {
                if let Err(e) = owner.own(text) {
                    tracing::debug!(error = %e, "Clipboard");
                }
            }
        }
        Some(action) => {
            let mut out = Vec::new();
            channels.clipboard(&action, &mut out);
            if !out.is_empty() {
                writer.write_all(&out).await?;
            }
        }
    }
    Ok(())
}

/// Tells the client the share is deactivated, then runs the capability exchange and the
/// finalization again with the screen at `size` (the static channels keep their state);
/// returns the acceptor for the next time and the input the client sent meanwhile.
async fn reactivate<R, W>(
    reader: &mut Framed<R>,
    writer: &mut Framed<W>,
    io_channel_id: u16,
    acceptor: Acceptor,
    channels: &mut Channels,
    (width, height): (u16, u16),
) -> anyhow::Result<(Acceptor, Vec<Vec<u8>>)>
where
    R: FramedRead,
    W: FramedWrite,
{
    let deactivate = ShareControlHeader {
        share_id: 0,
        pdu_source: io_channel_id,
        share_control_pdu: ShareControlPdu::ServerDeactivateAll(ServerDeactivateAll),
    };
    let pdu = X224(SendDataIndication {
        initiator_id: channels.user_channel_id,
        channel_id: io_channel_id,
        user_data: ironrdp_core::encode_vec(&deactivate)?.into(),
    });
    writer.write_all(&ironrdp_core::encode_vec(&pdu)?).await?;
    let mut acceptor = Acceptor::new_deactivation_reactivation(
        acceptor,
        std::mem::take(&mut channels.set),
        DesktopSize { width, height },
    )
    .map_err(|e| anyhow::anyhow!("reactivation: {e}"))?;
    let mut buf = WriteBuf::new();
    while !matches!(
        state_downcast::<AcceptorState>(acceptor.state()),
        Some(AcceptorState::Accepted { .. })
    ) {
        let input = match acceptor.next_pdu_hint() {
            Some(hint) => Some(reader.read_by_hint(hint).await?),
            None => None,
        };
        buf.clear();
        match &input {
            Some(pdu) => acceptor.step(pdu, None, &mut buf),
            None => acceptor.step_no_input(&mut buf),
        }
        .map_err(|e| anyhow::anyhow!("reactivation: {e}"))?;
        if buf.filled_len() > 0 {
            writer.write_all(buf.filled()).await?;
        }
    }
    let result = acceptor
        .get_result()
        .context("the reactivation finished without a result")?;
    channels.set = result.static_channels;
    tracing::info!(width, height, "Reactivated at the new screen size");
    Ok((acceptor, result.input_events))
}

/// Applies one client PDU; `Some` when it ends the session.
fn handle_input(
    desktop: &dyn Desktop,
    io_channel_id: u16,
    action: Action,
    pdu: &[u8],
    channels: &mut Channels,
    out: &mut Vec<u8>,
) -> anyhow::Result<Option<End>> {
    match action {
        Action::FastPath => {
            let input: FastPathInput = match ironrdp_core::decode(pdu) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable fast-path input ignored");
                    return Ok(None);
                }
            };
            for event in input.input_events() {
                for i in fast_path_event(event) {
                    desktop.input(i)?;
                }
            }
            Ok(None)
        }
        Action::X224 => {
            let message: X224<McsMessage<'_>> = match ironrdp_core::decode(pdu) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable PDU ignored");
                    return Ok(None);
                }
            };
            match message.0 {
                McsMessage::DisconnectProviderUltimatum(_) => Ok(Some(End::Client)),
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) if channel_id == io_channel_id => {
                    let Ok(header) = ironrdp_core::decode::<ShareControlHeader>(user_data.as_ref())
                    else {
                        return Ok(None);
                    };
                    let ShareControlPdu::Data(data) = header.share_control_pdu else {
                        return Ok(None);
                    };
                    match data.share_data_pdu {
                        ShareDataPdu::Input(input) => {
                            for event in &input.0 {
                                for i in slow_path_event(event) {
                                    desktop.input(i)?;
                                }
                            }
                            Ok(None)
                        }
                        ShareDataPdu::ShutdownRequest => Ok(Some(End::Client)),
                        _ => Ok(None),
                    }
                }
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) => {
                    channels.process(channel_id, user_data.as_ref(), out);
                    Ok(None)
                }
                _ => Ok(None),
            }
        }
    }
}

fn key(scancode: u16, extended: bool, down: bool) -> Input {
    Input::Key {
        scancode: (scancode & 0xff) as u8,
        extended,
        down,
    }
}

fn fast_path_event(event: &FastPathInputEvent) -> Vec<Input> {
    match event {
        FastPathInputEvent::KeyboardEvent(flags, code) => vec![key(
            u16::from(*code),
            flags.contains(KeyboardFlags::EXTENDED),
            !flags.contains(KeyboardFlags::RELEASE),
        )],
        FastPathInputEvent::UnicodeKeyboardEvent(flags, unit) => vec![Input::Unicode {
            unit: *unit,
            down: !flags.contains(KeyboardFlags::RELEASE),
        }],
        FastPathInputEvent::MouseEvent(m) => mouse(m),
        FastPathInputEvent::MouseEventEx(m) => {
            let down = m.flags.contains(PointerXFlags::DOWN);
            let button = if m.flags.contains(PointerXFlags::BUTTON1) {
                Button::X1
            } else {
                Button::X2
            };
            vec![
                Input::Move {
                    x: m.x_position,
                    y: m.y_position,
                },
                Input::Button { button, down },
            ]
        }
        _ => Vec::new(),
    }
}

fn slow_path_event(event: &InputEvent) -> Vec<Input> {
    match event {
        InputEvent::ScanCode(s) => vec![key(
            s.key_code,
            s.flags.contains(scan_code::KeyboardFlags::EXTENDED),
            !s.flags.contains(scan_code::KeyboardFlags::RELEASE),
        )],
        InputEvent::Unicode(u) => vec![Input::Unicode {
            unit: u.unicode_code,
            down: !u
                .flags
                .contains(ironrdp_pdu::input::unicode::KeyboardFlags::RELEASE),
        }],
        InputEvent::Mouse(m) => mouse(m),
        InputEvent::MouseX(m) => fast_path_event(&FastPathInputEvent::MouseEventEx(*m)),
        _ => Vec::new(),
    }
}

/// A mouse PDU (MS-RDPBCGR 2.2.8.1.1.3.1.1.3): a move, a button, or a wheel turn.
fn mouse(m: &MousePdu) -> Vec<Input> {
    let f = m.flags;
    if f.intersects(PointerFlags::VERTICAL_WHEEL | PointerFlags::HORIZONTAL_WHEEL) {
        let amount = i32::from(m.number_of_wheel_rotation_units);
        let (vertical, horizontal) = if f.contains(PointerFlags::HORIZONTAL_WHEEL) {
            (0, amount)
        } else {
            (amount, 0)
        };
        return vec![Input::Wheel {
            vertical,
            horizontal,
        }];
    }
    let mut events = vec![Input::Move {
        x: m.x_position,
        y: m.y_position,
    }];
    let down = f.contains(PointerFlags::DOWN);
    for (flag, button) in [
        (PointerFlags::LEFT_BUTTON, Button::Left),
        (PointerFlags::RIGHT_BUTTON, Button::Right),
        (PointerFlags::MIDDLE_BUTTON_OR_WHEEL, Button::Middle),
    ] {
        if f.contains(flag) {
            events.push(Input::Button { button, down });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mouse_pdus_become_moves_buttons_and_wheel_turns() {
        let m = |flags, wheel, x, y| MousePdu {
            flags,
            number_of_wheel_rotation_units: wheel,
            x_position: x,
            y_position: y,
        };
        assert_eq!(
            mouse(&m(PointerFlags::MOVE, 0, 10, 20)),
            vec![Input::Move { x: 10, y: 20 }]
        );
        assert_eq!(
            mouse(&m(PointerFlags::LEFT_BUTTON | PointerFlags::DOWN, 0, 5, 6)),
            vec![
                Input::Move { x: 5, y: 6 },
                Input::Button {
                    button: Button::Left,
                    down: true
                }
            ]
        );
        assert_eq!(
            mouse(&m(PointerFlags::VERTICAL_WHEEL, -120, 0, 0)),
            vec![Input::Wheel {
                vertical: -120,
                horizontal: 0
            }]
        );
    }
}
