//! The active session: one loop over a closed set of [`Event`]s — a PDU from the client, a
//! frame tick, a channel's report, the server closing — each handled in turn:
//! - client input goes to the desktop, channel data to its channel ([`input`]);
//! - at each tick the desktop's changes go to the client ([`screen`], through the
//!   [`crate::encode::ScreenEncoder`] chosen after the capability exchange);
//! - channel events ([`crate::channels`]): the clipboard's, the client's size requests
//!   (the desktop is resized and the Deactivation-Reactivation Sequence announces the new
//!   size; on the graphics pipeline the next frame resets the graphics to it), and the
//!   graphics pipeline's ([`gfx`]: the screen goes over it while it works).

mod gfx;
mod input;
mod outbox;
mod pace;
mod screen;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deskport_desktop::Desktop;
use ironrdp_acceptor::{Acceptor, AcceptorState, DesktopSize};
use ironrdp_async::{bytes::BytesMut, Framed, FramedRead};
use ironrdp_connector::{state_downcast, Sequence as _};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::mcs::{DisconnectProviderUltimatum, McsMessage, SendDataIndication};
use ironrdp_pdu::rdp::headers::{ServerDeactivateAll, ShareControlHeader, ShareControlPdu};
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;
use tokio::sync::watch;

use crate::channels::{ChannelEvent, Channels};
use crate::encode::ScreenEncoder;
use outbox::Outbox;
use pace::Pacer;
use screen::Screen;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client logged off or disconnected.
    Client,
    /// The server closed it (shutdown, Remote Desktop switched off).
    Server(String),
}

/// What the loop needs.
pub struct SessionParams {
    pub desktop: Arc<dyn Desktop>,
    pub io_channel_id: u16,
    /// The screen encoder for this client.
    pub encoder: Box<dyn ScreenEncoder>,
    /// The client takes 32-bit New Pointer updates (else 24-bit Color Pointer ones).
    pub new_pointer: bool,
    /// Time between screen checks.
    pub frame_interval: Duration,
    /// Input events the client sent during connection finalization.
    pub backlog: Vec<Vec<u8>>,
    /// The channels the client joined.
    pub channels: Channels,
    /// The acceptor that ran the connection sequence, kept where the client may ask for
    /// another size (its Deactivation-Reactivation Sequence announces it).
    pub acceptor: Option<Acceptor>,
}

impl std::fmt::Debug for SessionParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionParams")
            .field("io_channel_id", &self.io_channel_id)
            .field("encoder", &self.encoder)
            .field("resizable", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything the session loop reacts to.
#[derive(Debug)]
enum Event {
    /// A PDU from the client (or why none came).
    Client(std::io::Result<(Action, BytesMut)>),
    /// Time to look at the screen.
    Frame,
    /// A channel reported something.
    Channel(ChannelEvent),
    /// The server ends the session, with the reason (`None`: no, it does not).
    Close(Option<String>),
}

/// Runs the session until the client leaves, `close` carries a reason, or the transport fails.
pub async fn run<R, W>(
    mut reader: Framed<R>,
    writer: W,
    params: SessionParams,
    mut close: watch::Receiver<Option<String>>,
) -> anyhow::Result<End>
where
    R: FramedRead,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut outbox = Outbox::spawn(writer);
    let SessionParams {
        desktop,
        io_channel_id,
        encoder,
        new_pointer,
        frame_interval,
        backlog,
        mut channels,
        mut acceptor,
    } = params;
    let mut screen = Screen::new(desktop.clone(), encoder, new_pointer);
    let mut pipeline = gfx::Pipeline::default();
    let mut out = Vec::new();
    if let Some(end) = input::backlog(
        &*desktop,
        io_channel_id,
        &backlog,
        &mut channels,
        &mut out,
        &mut |id| screen.acknowledged(id),
    )? {
        return Ok(end);
    }
    // The channels start (cliprdr: capabilities and monitor ready; drdynvc: its capabilities).
    channels.start_all(&mut out);
    let mut ticker = tokio::time::interval(frame_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pacer = Pacer::new(desktop.drawn());
    loop {
        if !out.is_empty() {
            outbox.send(std::mem::take(&mut out)).await?;
        }
        let event = tokio::select! {
            read = reader.read_pdu() => Event::Client(read),
            _ = ticker.tick() => Event::Frame,
            () = pacer.due() => Event::Frame,
            event = channels.next_event() => Event::Channel(event),
            changed = close.changed() => Event::Close(match changed {
                Ok(()) => close.borrow().clone(),
                Err(_) => Some("server shutting down".to_owned()),
            }),
        };
        match event {
            Event::Client(Ok((action, pdu))) => {
                match input::handle(
                    &*desktop,
                    io_channel_id,
                    action,
                    &pdu,
                    &mut channels,
                    &mut out,
                )? {
                    input::Outcome::Continue => {}
                    input::Outcome::FrameAcknowledged(id) => {
                        screen.acknowledged(id);
                        pacer.released();
                    }
                    input::Outcome::End(end) => return Ok(end),
                }
            }
            Event::Client(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(End::Client)
            }
            Event::Client(Err(e)) => return Err(e.into()),
            // A frame only once the last one has gone to the network and the client has
            // acknowledged enough of them (a slow link or client skips frames, and the next
            // one shows everything that changed meanwhile).
            Event::Frame if outbox.queued() == 0 && screen.ready() => {
                screen.update(&mut out).await?;
                pacer.sent();
            }
            Event::Frame => pacer.held(),
            Event::Channel(ChannelEvent::Clipboard(event)) => channels.clipboard(event, &mut out),
            Event::Channel(ChannelEvent::Sound(next)) => channels.sound(next, &*desktop, &mut out),
            Event::Channel(ChannelEvent::Drive(next)) => channels.drive(next, &mut out),
            Event::Channel(ChannelEvent::Gfx(event)) => {
                let drdynvc = channels.drdynvc_id();
                if pipeline.event(event, &mut screen, drdynvc, channels.user_channel_id) {
                    pacer.released();
                }
            }
            Event::Channel(ChannelEvent::Resize(size)) => {
                let Some(size) = resize(&desktop, size).await? else {
                    continue;
                };
                if pipeline.active() {
                    // The next frame, at the new size, resets the graphics (a new surface).
                    tracing::info!(
                        width = size.0,
                        height = size.1,
                        "Graphics reset to the new screen size"
                    );
                    screen.resend();
                    continue;
                }
                let Some(old) = acceptor.take() else {
                    continue;
                };
                let (next_acceptor, backlog) = reactivate(
                    &mut reader,
                    &mut outbox,
                    io_channel_id,
                    old,
                    &mut channels,
                    size,
                    &mut |id| screen.acknowledged(id),
                )
                .await?;
                acceptor = Some(next_acceptor);
                if let Some(end) = input::backlog(
                    &*desktop,
                    io_channel_id,
                    &backlog,
                    &mut channels,
                    &mut out,
                    &mut |id| screen.acknowledged(id),
                )? {
                    return Ok(end);
                }
                // Everything again, at the new size.
                screen.resend();
            }
            Event::Close(None) => {}
            Event::Close(Some(reason)) => {
                // A Disconnect Provider Ultimatum tells the client the server ends it.
                let bye = X224(McsMessage::DisconnectProviderUltimatum(
                    DisconnectProviderUltimatum::from_reason(
                        ironrdp_pdu::mcs::DisconnectReason::ProviderInitiated,
                    ),
                ));
                if let Ok(bytes) = ironrdp_core::encode_vec(&bye) {
                    let _ = outbox.send(bytes).await;
                }
                outbox.close(Duration::from_secs(2)).await;
                return Ok(End::Server(reason));
            }
        }
    }
}

/// Resizes the desktop to `size` for the client; the size it has then, or `None` when nothing
/// changed (it already had that size, or cannot change it).
async fn resize(
    desktop: &Arc<dyn Desktop>,
    size: (u16, u16),
) -> anyhow::Result<Option<(u16, u16)>> {
    if size == desktop.size() {
        return Ok(None);
    }
    let d = desktop.clone();
    match tokio::task::spawn_blocking(move || d.resize(size.0, size.1)).await? {
        Ok(size) => Ok(Some(size)),
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "The screen keeps its size");
            Ok(None)
        }
    }
}

/// Tells the client the share is deactivated, then runs the capability exchange and the
/// finalization again with the screen at `size` (the static channels keep their state);
/// returns the acceptor for the next time and the input the client sent meanwhile. Frame
/// acknowledgements the client sends meanwhile (for frames sent before) go to
/// `acknowledged`: the acceptor would take one for a malformed Confirm Active.
async fn reactivate<R>(
    reader: &mut Framed<R>,
    writer: &mut Outbox,
    io_channel_id: u16,
    acceptor: Acceptor,
    channels: &mut Channels,
    (width, height): (u16, u16),
    acknowledged: &mut (dyn FnMut(u32) + Send),
) -> anyhow::Result<(Acceptor, Vec<Vec<u8>>)>
where
    R: FramedRead,
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
    writer.send(ironrdp_core::encode_vec(&pdu)?).await?;
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
        if let Some(id) = input
            .as_deref()
            .and_then(|pdu| input::frame_acknowledgement(io_channel_id, pdu))
        {
            acknowledged(id);
            continue;
        }
        buf.clear();
        match &input {
            Some(pdu) => acceptor.step(pdu, None, &mut buf),
            None => acceptor.step_no_input(&mut buf),
        }
        .map_err(|e| anyhow::anyhow!("reactivation: {e}"))?;
        if buf.filled_len() > 0 {
            writer.send(buf.filled().to_vec()).await?;
        }
    }
    let result = acceptor
        .get_result()
        .context("the reactivation finished without a result")?;
    channels.set = result.static_channels;
    tracing::info!(width, height, "Reactivated at the new screen size");
    Ok((acceptor, result.input_events))
}
