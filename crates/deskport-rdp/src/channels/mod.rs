//! A session's virtual channels. Each channel is a module that turns what its PDUs say into
//! [`ChannelEvent`]s for the session loop and the loop's answers back into PDUs:
//! - [`cliprdr`]: the text clipboard (static channel `cliprdr`);
//! - [`display_control`]: the client's size requests (Display Control, a dynamic channel over
//!   `drdynvc`), attached only when the desktops can change size;
//! - [`gfx`]: the graphics pipeline (a dynamic channel over `drdynvc`), opened only for
//!   clients whose early capability flags ask for it.
//!
//! [`attach`] offers the channels to a connection's acceptor; after the connection sequence
//! [`Channels`] owns the channels the client joined.

pub mod cliprdr;
pub mod display_control;
pub mod gfx;

use deskport_desktop::Desktop;
use deskport_proto::clipboard::ClipboardAction;
use deskport_proto::next;
use ironrdp_acceptor::Acceptor;
use ironrdp_cliprdr::CliprdrServer;
use ironrdp_dvc::DrdynvcServer;
use ironrdp_svc::{server_encode_svc_messages, StaticChannelSet, SvcMessage};
use tokio::sync::mpsc::UnboundedReceiver;

use self::cliprdr::ClipboardEvent;
use self::gfx::{GfxEvent, GfxServer};

/// What a channel reports to the session loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    Clipboard(ClipboardEvent),
    /// Display Control: the client asks for a screen of this size.
    Resize((u16, u16)),
    /// The graphics pipeline.
    Gfx(GfxEvent),
}

/// The channels' event sources, between the acceptor and the session.
#[derive(Debug)]
pub struct Attached {
    clipboard: UnboundedReceiver<deskport_proto::clipboard::FromPeer>,
    resize: Option<UnboundedReceiver<(u16, u16)>>,
    gfx: UnboundedReceiver<GfxEvent>,
}

/// Offers the channels to `acceptor`: the clipboard and the graphics pipeline always,
/// Display Control when the desktop can change size (`resizable`).
pub fn attach(acceptor: &mut Acceptor, resizable: bool) -> Attached {
    let (cliprdr, clipboard) = cliprdr::processor();
    acceptor.attach_static_channel(cliprdr);
    let mut drdynvc = DrdynvcServer::new();
    let mut resize = None;
    if resizable {
        let (display_control, requests) = display_control::processor();
        drdynvc = drdynvc.with_dynamic_channel(display_control);
        resize = Some(requests);
    }
    let (graphics, gfx) = gfx::processor(gfx::ZGFX_MODE);
    acceptor.attach_static_channel(drdynvc.with_dynamic_channel(graphics));
    Attached {
        clipboard,
        resize,
        gfx,
    }
}

/// The channels of a session.
#[derive(Debug)]
pub struct Channels {
    /// The static channels the client joined (the acceptor's, handed back and forth at each
    /// reactivation).
    pub set: StaticChannelSet,
    pub user_channel_id: u16,
    clipboard: cliprdr::Clipboard,
    resize: Option<UnboundedReceiver<(u16, u16)>>,
    gfx: Option<UnboundedReceiver<GfxEvent>>,
}

impl Channels {
    /// The channels of `set` (joined by the client), with the event sources of `attached`
    /// and the clipboard of `desktop`; the graphics pipeline only if the client's early
    /// capability flags ask for it (`gfx`: SUPPORT_DYN_VC_GFX_PROTOCOL), else its channel is
    /// not even offered.
    pub fn new(
        mut set: StaticChannelSet,
        user_channel_id: u16,
        attached: Attached,
        desktop: &dyn Desktop,
        gfx: bool,
    ) -> Self {
        if !gfx {
            let drdynvc = set
                .get_by_type_mut::<DrdynvcServer>()
                .and_then(|c| c.channel_processor_downcast_mut::<DrdynvcServer>());
            if let Some(drdynvc) = drdynvc {
                if let Some(id) = drdynvc.get_channel_id_by_type::<GfxServer>() {
                    // Not created yet: nothing to tell the client.
                    let _ = drdynvc.close_channel(id);
                }
            }
        }
        let joined = set.get_channel_id_by_type::<CliprdrServer>().is_some();
        let desktop_clipboard = match desktop.clipboard() {
            Some(Ok(c)) if joined => Some(c),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "No clipboard for this session");
                None
            }
            _ => None,
        };
        Self {
            set,
            user_channel_id,
            clipboard: cliprdr::Clipboard::new(attached.clipboard, desktop_clipboard),
            resize: attached.resize,
            gfx: gfx.then_some(attached.gfx),
        }
    }

    /// The MCS channel of `drdynvc`, if the client joined it.
    pub fn drdynvc_id(&self) -> Option<u16> {
        self.set.get_channel_id_by_type::<DrdynvcServer>()
    }

    /// The next thing a channel reports (never resolves while none has anything).
    pub async fn next_event(&mut self) -> ChannelEvent {
        loop {
            tokio::select! {
                event = self.clipboard.next() => return ChannelEvent::Clipboard(event),
                size = next(&mut self.resize) => match size {
                    // A window being dragged asks many times: the last size counts.
                    Some(mut size) => {
                        while let Some(later) = self.resize.as_mut().and_then(|r| r.try_recv().ok()) {
                            size = later;
                        }
                        return ChannelEvent::Resize(size);
                    }
                    None => self.resize = None,
                },
                event = next(&mut self.gfx) => match event {
                    Some(event) => return ChannelEvent::Gfx(event),
                    None => self.gfx = None,
                },
            }
        }
    }

    /// A clipboard event: the desktop's side is handled here; what the channel carries is
    /// appended to `out`.
    pub fn clipboard(&mut self, event: ClipboardEvent, out: &mut Vec<u8>) {
        let ready = self.cliprdr().is_some_and(|c| c.is_ready());
        if let Some(action) = self.clipboard.handle(event, ready) {
            self.clipboard_action(&action, out);
        }
    }

    fn cliprdr(&mut self) -> Option<&mut CliprdrServer> {
        self.set
            .get_by_type_mut::<CliprdrServer>()
            .and_then(|c| c.channel_processor_downcast_mut::<CliprdrServer>())
    }

    fn clipboard_action(&mut self, action: &ClipboardAction, out: &mut Vec<u8>) {
        let Some(id) = self.set.get_channel_id_by_type::<CliprdrServer>() else {
            return;
        };
        let Some(cliprdr) = self.cliprdr() else {
            return;
        };
        match deskport_proto::clipboard::perform(cliprdr, action) {
            Ok(msgs) => append(Vec::from(msgs), id, self.user_channel_id, out),
            Err(e) => tracing::debug!(error = %e, "Clipboard channel"),
        }
    }

    /// Starts every channel the client joined (cliprdr: capabilities and monitor ready;
    /// drdynvc: its capabilities); what they send is appended to `out`.
    pub fn start_all(&mut self, out: &mut Vec<u8>) {
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
            append(msgs, channel_id, user_channel_id, out);
        }
    }

    /// A PDU the client sent on one of the channels; the answers are appended to `out`.
    pub fn process(&mut self, channel_id: u16, data: &[u8], out: &mut Vec<u8>) {
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
        append(msgs, channel_id, self.user_channel_id, out);
    }
}

/// Appends `msgs`, encoded for channel `channel_id`, to `out`.
fn append(msgs: Vec<SvcMessage>, channel_id: u16, user_channel_id: u16, out: &mut Vec<u8>) {
    match server_encode_svc_messages(msgs, channel_id, user_channel_id) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => tracing::debug!(error = %e, channel_id, "Channel message not encodable"),
    }
}

/// The fuzzing oracle of the channels a logged-on client talks to (see `fuzz/`): `data` as a
/// series of `[channel, length (u16 LE), payload]` records, each payload given to the
/// clipboard's static channel (even channel bytes) or to `drdynvc` with Display Control and
/// the graphics pipeline (odd ones), as the session loop gives them. Nothing panics (a PDU the
/// channel cannot take is an error for that PDU), and every size Display Control reports is
/// one MS-RDPEDISP allows (200 to 8192, an even width).
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    for (w, h) in channel_events(data) {
        assert!(
            (200..=8192).contains(&w) && (200..=8192).contains(&h) && w % 2 == 0,
            "Display Control reported {w}x{h}"
        );
    }
}

/// Feeds `data`'s records to fresh channels; the sizes Display Control reported.
#[cfg(any(test, feature = "fuzzing"))]
fn channel_events(data: &[u8]) -> Vec<(u16, u16)> {
    use ironrdp_svc::SvcProcessor as _;
    let (mut cliprdr, mut clipboard) = cliprdr::processor();
    let (display_control, mut resize) = display_control::processor();
    let (graphics, mut gfx) = gfx::processor(gfx::ZGFX_MODE);
    let mut drdynvc = DrdynvcServer::new()
        .with_dynamic_channel(display_control)
        .with_dynamic_channel(graphics);
    let _ = cliprdr.start();
    let _ = drdynvc.start();
    let mut sizes = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (channel, payload) = (rest[0], &rest[3..3 + len]);
        rest = &rest[3 + len..];
        let _ = if channel % 2 == 0 {
            cliprdr.process(payload)
        } else {
            drdynvc.process(payload)
        };
        while let Ok(size) = resize.try_recv() {
            sizes.push(size);
        }
        while clipboard.try_recv().is_ok() {}
        while gfx.try_recv().is_ok() {}
    }
    sizes
}

#[cfg(test)]
mod oracle_tests {
    /// A record of the oracle's input.
    fn record(channel: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![channel];
        r.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        r.extend_from_slice(payload);
        r
    }

    /// What a client sends on `drdynvc` to open the dynamic channels (ids from 0 in the order
    /// they were attached: Display Control, then the graphics pipeline) and ask for 1280x800
    /// through Display Control, as records of the oracle's input.
    fn display_control_session() -> Vec<u8> {
        let mut layout = Vec::new();
        for v in [2u32, 56, 40, 1, 1, 0, 0, 1280, 800, 0, 0, 0, 100, 100] {
            layout.extend_from_slice(&v.to_le_bytes());
        }
        let mut data = record(1, &[0x50, 0x00, 0x03, 0x00]); // capabilities, version 3
        data.extend(record(1, &[0x10, 0x00, 0, 0, 0, 0])); // channel 0 created
        data.extend(record(1, &[0x10, 0x01, 0, 0, 0, 0])); // channel 1 created
        let mut pdu = vec![0x30, 0x00]; // data on channel 0 (Display Control)
        pdu.extend_from_slice(&layout);
        data.extend(record(1, &pdu));
        data
    }

    /// The oracle reaches Display Control through drdynvc as a real client's PDUs do.
    /// `DESKPORT_WRITE_FUZZ_SEEDS=DIR` writes the input as the `channels` target's seed.
    #[test]
    fn the_oracle_reaches_display_control() {
        let data = display_control_session();
        assert_eq!(super::channel_events(&data), vec![(1280, 800)]);
        if let Some(dir) = std::env::var_os("DESKPORT_WRITE_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("channels");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("display-control-1280x800"), &data).unwrap();
        }
    }
}
