//! A session's virtual channels. Each channel is a module that turns what its PDUs say into
//! [`ChannelEvent`]s for the session loop and the loop's answers back into PDUs:
//! - [`cliprdr`]: the text clipboard (static channel `cliprdr`);
//! - [`display_control`]: the client's size requests (Display Control, a dynamic channel over
//!   `drdynvc`), attached only when the desktops can change size;
//! - [`gfx`]: the graphics pipeline (a dynamic channel over `drdynvc`), opened only for
//!   clients whose early capability flags ask for it;
//! - [`sound`]: what the session plays (static channel `rdpsnd`), offered unless sound is
//!   off;
//! - [`drives`]: the client's drives, mounted in the session (static channel `rdpdr`),
//!   offered unless drives are off.
//!
//! [`attach`] offers the channels to a connection's acceptor; after the connection sequence
//! [`Channels`] owns the channels the client joined.

pub mod cliprdr;
pub mod display_control;
pub mod drives;
pub mod gfx;
pub mod sound;

use deskport_desktop::Desktop;
use deskport_proto::clipboard::ClipboardAction;
use deskport_proto::next;
use ironrdp_acceptor::Acceptor;
use ironrdp_cliprdr::CliprdrServer;
use ironrdp_dvc::DrdynvcServer;
use ironrdp_rdpsnd::server::RdpsndServer;
use ironrdp_svc::{server_encode_svc_messages, StaticChannelSet, SvcMessage};
use tokio::sync::mpsc::UnboundedReceiver;

use self::cliprdr::ClipboardEvent;
use self::drives::{DriveChannel, DriveEvent, DriveNext, Drives};
use self::gfx::{GfxEvent, GfxServer};
use self::sound::{Sound, SoundCodec, SoundEvent, SoundNext};

/// What a channel reports to the session loop.
#[derive(Debug, PartialEq)]
pub enum ChannelEvent {
    Clipboard(ClipboardEvent),
    /// Display Control: the client asks for a screen of this size.
    Resize((u16, u16)),
    /// The graphics pipeline.
    Gfx(GfxEvent),
    /// Sound: the channel's negotiation, or captured sound to send.
    Sound(SoundNext),
    /// Drives: one came or went, or an operation on one has a request to send.
    Drive(DriveNext),
}

/// The channels' event sources, between the acceptor and the session.
#[derive(Debug)]
pub struct Attached {
    clipboard: UnboundedReceiver<deskport_proto::clipboard::FromPeer>,
    resize: Option<UnboundedReceiver<(u16, u16)>>,
    gfx: UnboundedReceiver<GfxEvent>,
    sound: Option<UnboundedReceiver<SoundEvent>>,
    drives: Option<UnboundedReceiver<DriveEvent>>,
}

/// Offers the channels to `acceptor`: the clipboard and the graphics pipeline always,
/// Display Control when the desktop can change size (`resizable`), sound in `sound`'s coding
/// unless it is `None`, the drives if `drives`.
pub fn attach(
    acceptor: &mut Acceptor,
    resizable: bool,
    sound: Option<SoundCodec>,
    drives: bool,
) -> Attached {
    let (cliprdr, clipboard) = cliprdr::processor();
    acceptor.attach_static_channel(cliprdr);
    let drives = drives.then(|| {
        let (rdpdr, events) = drives::processor();
        acceptor.attach_static_channel(rdpdr);
        events
    });
    let sound = sound.map(|codec| {
        let (rdpsnd, events) = sound::processor(codec);
        acceptor.attach_static_channel(rdpsnd);
        events
    });
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
        sound,
        drives,
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
    sound: Sound,
    /// The client sent the sound channel a PDU it could not take: the channel is ignored from
    /// then on.
    sound_broken: bool,
    drives: Drives,
    /// The client sent the drive channel a PDU it could not take: its drives are unmounted
    /// and the channel is ignored from then on.
    drives_broken: bool,
}

impl Channels {
    /// The channels of `set` (joined by the client), with the event sources of `attached`
    /// and the clipboard of `desktop`; the graphics pipeline only if the client's early
    /// capability flags ask for it (`gfx`: SUPPORT_DYN_VC_GFX_PROTOCOL), else its channel is
    /// not even offered; sound only if the client wants it (`sound`: its Client Info does not
    /// say otherwise); drives into the desktop's home, if it has one, each request answered
    /// within `drive_timeout`.
    pub fn new(
        mut set: StaticChannelSet,
        user_channel_id: u16,
        attached: Attached,
        desktop: &dyn Desktop,
        gfx: bool,
        sound: bool,
        drive_timeout: std::time::Duration,
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
            sound: Sound::new(attached.sound.filter(|_| sound)),
            sound_broken: false,
            drives: Drives::new(attached.drives, desktop.drives_home(), drive_timeout),
            drives_broken: false,
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
                next = self.sound.next() => return ChannelEvent::Sound(next),
                next = self.drives.next() => return ChannelEvent::Drive(next),
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

    /// A sound event: the capture starts or stops; captured sound is encoded and what the
    /// channel carries is appended to `out`.
    pub fn sound(&mut self, next: SoundNext, desktop: &dyn Desktop, out: &mut Vec<u8>) {
        match next {
            SoundNext::Event(SoundEvent::Start(_)) if self.sound_broken => {}
            SoundNext::Event(SoundEvent::Start(format)) => {
                self.sound.start(desktop, &format);
            }
            SoundNext::Event(SoundEvent::Stop) => self.sound.stop(),
            SoundNext::Pcm(at, pcm) => {
                let Some((wave, ts)) = self.sound.encode(at, &pcm) else {
                    return;
                };
                let Some(id) = self.set.get_channel_id_by_type::<RdpsndServer>() else {
                    return;
                };
                let rdpsnd = self
                    .set
                    .get_by_type_mut::<RdpsndServer>()
                    .and_then(|c| c.channel_processor_downcast_mut::<RdpsndServer>());
                let Some(rdpsnd) = rdpsnd.filter(|r| r.is_ready()) else {
                    return;
                };
                match rdpsnd.wave(wave, ts) {
                    Ok(msgs) => append(msgs.into(), id, self.user_channel_id, out),
                    Err(e) => {
                        tracing::warn!(error = %e, "Sound channel: wave not sent; sound stopped");
                        self.sound.stop();
                    }
                }
            }
        }
    }

    /// A drive event (mount, unmount) or a drive request to send (appended to `out`).
    pub fn drive(&mut self, next: DriveNext, out: &mut Vec<u8>) {
        match next {
            DriveNext::Event(_) if self.drives_broken => {}
            DriveNext::Event(event) => self.drives.event(event),
            DriveNext::Irp(irp) => {
                let Some(id) = self.set.get_channel_id_by_type::<DriveChannel>() else {
                    return;
                };
                let rdpdr = self
                    .set
                    .get_by_type_mut::<DriveChannel>()
                    .and_then(|c| c.channel_processor_downcast_mut::<DriveChannel>());
                let Some(rdpdr) = rdpdr.filter(|_| !self.drives_broken) else {
                    return; // The request's answer is dropped: EIO.
                };
                match rdpdr.request(irp) {
                    Ok(msgs) => append(msgs, id, self.user_channel_id, out),
                    Err(e) => tracing::debug!(error = %e, "Drive request not sent"),
                }
            }
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
        let sound = Some(channel_id) == self.set.get_channel_id_by_type::<RdpsndServer>();
        if sound && self.sound_broken {
            return;
        }
        let drives = Some(channel_id) == self.set.get_channel_id_by_type::<DriveChannel>();
        if drives && self.drives_broken {
            return;
        }
        let Some(channel) = self.set.get_by_channel_id_mut(channel_id) else {
            tracing::debug!(channel_id, "Data on an unknown channel ignored");
            return;
        };
        let msgs = match channel.process(data) {
            Ok(msgs) => msgs,
            Err(e) if sound => {
                // The sound channel ends; the session goes on.
                tracing::warn!(error = %e, channel_id, "Malformed PDU on the sound channel: sound ends for this session");
                self.sound_broken = true;
                self.sound.stop();
                return;
            }
            Err(e) if drives => {
                // The drive channel ends (its drives are unmounted); the session goes on.
                tracing::warn!(error = %e, channel_id, "Malformed PDU on the drive channel: the client's drives end for this session");
                self.drives_broken = true;
                self.drives.unmount_all();
                if let Some(rdpdr) = self
                    .set
                    .get_by_type_mut::<DriveChannel>()
                    .and_then(|c| c.channel_processor_downcast_mut::<DriveChannel>())
                {
                    rdpdr.abandon();
                }
                return;
            }
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
/// series of `[channel, length (u16 LE), payload]` records, each payload given (by the channel
/// byte modulo 4) to the clipboard's static channel (0), to `drdynvc` with Display Control and
/// the graphics pipeline (1), to the sound channel (2) or to the drive channel (3), as the
/// session loop gives them. Nothing panics (a PDU the
/// channel cannot take is an error for that PDU), and every size Display Control reports is
/// one MS-RDPEDISP allows (200 to 8192, an even width).
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    for (w, h) in channel_events(data).0 {
        assert!(
            (200..=8192).contains(&w) && (200..=8192).contains(&h) && w % 2 == 0,
            "Display Control reported {w}x{h}"
        );
    }
}

/// Feeds `data`'s records to fresh channels; the sizes Display Control reported, and the
/// sound formats the sound channel started with.
#[cfg(any(test, feature = "fuzzing"))]
#[allow(clippy::type_complexity)]
fn channel_events(
    data: &[u8],
) -> (
    Vec<(u16, u16)>,
    Vec<ironrdp_rdpsnd::pdu::AudioFormat>,
    Vec<DriveEvent>,
) {
    use ironrdp_svc::SvcProcessor as _;
    let (mut cliprdr, mut clipboard) = cliprdr::processor();
    let (display_control, mut resize) = display_control::processor();
    let (graphics, mut gfx) = gfx::processor(gfx::ZGFX_MODE);
    let (mut rdpsnd, mut sound) = sound::processor(SoundCodec::Auto);
    let (mut rdpdr, mut drive_events) = drives::processor();
    let mut drdynvc = DrdynvcServer::new()
        .with_dynamic_channel(display_control)
        .with_dynamic_channel(graphics);
    let _ = cliprdr.start();
    let _ = drdynvc.start();
    let _ = rdpsnd.start();
    let _ = rdpdr.start();
    let mut sizes = Vec::new();
    let mut formats = Vec::new();
    let mut drives = Vec::new();
    let mut answers = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (channel, payload) = (rest[0], &rest[3..3 + len]);
        rest = &rest[3 + len..];
        let _ = match channel % 4 {
            0 => cliprdr.process(payload),
            1 => drdynvc.process(payload),
            2 => rdpsnd.process(payload),
            _ => {
                // A request before each PDU (its kind from the channel byte), so that
                // completions find one to answer (ids count from 0) and every completion
                // decoder is reached.
                let (reply, answer) = tokio::sync::oneshot::channel();
                if rdpdr
                    .request(drives::Irp {
                        message: drives::fuzz_request(channel / 4),
                        reply,
                    })
                    .is_ok()
                {
                    answers.push(answer);
                }
                if answers.len() > 64 {
                    answers.clear();
                }
                rdpdr.process(payload)
            }
        };
        while let Ok(event) = drive_events.try_recv() {
            drives.push(event);
        }
        while let Ok(size) = resize.try_recv() {
            sizes.push(size);
        }
        while clipboard.try_recv().is_ok() {}
        while gfx.try_recv().is_ok() {}
        while let Ok(event) = sound.try_recv() {
            if let SoundEvent::Start(format) = event {
                formats.push(format);
            }
        }
    }
    (sizes, formats, drives)
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
        assert_eq!(super::channel_events(&data).0, vec![(1280, 800)]);
        crate::testing::write_fuzz_seed("channels", "display-control-1280x800", &data);
    }

    /// The oracle reaches the sound channel's negotiation as xfreerdp's PDUs do (formats: PCM,
    /// quality mode, training confirm). `DESKPORT_WRITE_FUZZ_SEEDS=DIR` writes the seed.
    #[test]
    fn the_oracle_reaches_the_sound_channel() {
        let pdus = super::sound::client_negotiation();
        let data: Vec<u8> = pdus
            .iter()
            .flat_map(|pdu| record(2, &ironrdp_core::encode_vec(pdu).unwrap()))
            .collect();
        assert_eq!(
            super::channel_events(&data).1,
            vec![deskport_proto::sound::pcm()]
        );
        crate::testing::write_fuzz_seed("channels", "sound-pcm", &data);
    }

    /// The oracle reaches the drive channel's device announce as xfreerdp's PDUs do (the
    /// handshake, then a drive and a printer). `DESKPORT_WRITE_FUZZ_SEEDS=DIR` writes the seed.
    #[test]
    fn the_oracle_reaches_the_drive_channel() {
        let mut pdus = super::drives::channel_tests::client_handshake();
        pdus.push(super::drives::channel_tests::announce());
        let data: Vec<u8> = pdus.iter().flat_map(|pdu| record(3, pdu)).collect();
        assert_eq!(
            super::channel_events(&data).2,
            vec![super::DriveEvent::Announced {
                id: 1,
                name: "share".to_owned()
            }]
        );
        crate::testing::write_fuzz_seed("channels", "drives-announce", &data);
    }
}

#[cfg(test)]
mod channel_tests {
    use ironrdp_rdpsnd::pdu::ClientAudioOutputPdu;
    use ironrdp_svc::StaticChannelSet;

    use super::*;

    use crate::testing::Blind;

    const SOUND: u16 = 1004;

    /// A session's channels with only `rdpsnd` joined (on channel [`SOUND`]).
    fn channels() -> Channels {
        let (rdpsnd, events) = sound::processor(SoundCodec::Auto);
        let mut set = StaticChannelSet::new();
        set.insert(rdpsnd);
        set.attach_channel_id(std::any::TypeId::of::<RdpsndServer>(), SOUND);
        let (_, clipboard) = cliprdr::processor();
        let (_, gfx) = gfx::processor(gfx::ZGFX_MODE);
        let attached = Attached {
            clipboard,
            resize: None,
            gfx,
            sound: Some(events),
            drives: None,
        };
        Channels::new(
            set,
            1007,
            attached,
            &Blind,
            false,
            true,
            std::time::Duration::from_secs(5),
        )
    }

    /// `pdu` as one chunk of a static channel (its Channel PDU Header: length, first and last).
    fn chunk(pdu: &ClientAudioOutputPdu) -> Vec<u8> {
        let body = ironrdp_core::encode_vec(pdu).unwrap();
        let mut data = (body.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(&body);
        data
    }

    fn negotiate(channels: &mut Channels, out: &mut Vec<u8>) {
        for pdu in sound::client_negotiation() {
            channels.process(SOUND, &chunk(&pdu), out);
        }
    }

    /// The channel negotiates PCM with a client that offers only PCM, and reports it.
    #[tokio::test]
    async fn the_sound_channel_reports_the_format_the_client_took() {
        let mut channels = channels();
        let mut out = Vec::new();
        channels.start_all(&mut out);
        assert!(!out.is_empty(), "no Server Audio Formats PDU");
        negotiate(&mut channels, &mut out);
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), channels.next_event())
            .await
            .unwrap();
        assert_eq!(
            event,
            ChannelEvent::Sound(SoundNext::Event(SoundEvent::Start(
                deskport_proto::sound::pcm()
            )))
        );
        // A desktop without sound: nothing starts, nothing is sent.
        let mut out = Vec::new();
        if let ChannelEvent::Sound(next) = event {
            channels.sound(next, &Blind, &mut out);
        }
        assert!(out.is_empty());
    }

    /// A malformed PDU ends the sound channel: later PDUs on it are ignored, negotiation does
    /// not restart, and nothing panics; the rest of the session (its loop) is untouched.
    #[tokio::test]
    async fn a_malformed_pdu_ends_the_sound_channel() {
        let mut channels = channels();
        let mut out = Vec::new();
        channels.start_all(&mut out);
        // A Client Audio Formats header claiming more body than there is.
        channels.process(
            SOUND,
            &[9, 0, 0, 0, 3, 0, 0, 0, 0x07, 0, 0xff, 0x7f, 1],
            &mut out,
        );
        assert!(channels.sound_broken);
        negotiate(&mut channels, &mut out);
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(300), channels.next_event())
                .await;
        assert!(
            nothing.is_err(),
            "the ended channel negotiated: {nothing:?}"
        );
    }

    /// A session's channels with only `rdpdr` joined (on channel 1005).
    fn drive_channels() -> Channels {
        let (rdpdr, events) = drives::processor();
        let mut set = StaticChannelSet::new();
        set.insert(rdpdr);
        set.attach_channel_id(std::any::TypeId::of::<DriveChannel>(), 1005);
        let (_, clipboard) = cliprdr::processor();
        let (_, gfx) = gfx::processor(gfx::ZGFX_MODE);
        let attached = Attached {
            clipboard,
            resize: None,
            gfx,
            sound: None,
            drives: Some(events),
        };
        Channels::new(
            set,
            1007,
            attached,
            &Blind,
            false,
            true,
            std::time::Duration::from_secs(5),
        )
    }

    /// A malformed PDU ends the drive channel (a Device List Announce whose count promises
    /// more devices than it holds): later announces are ignored; the session goes on.
    #[tokio::test]
    async fn a_malformed_pdu_ends_the_drive_channel() {
        let mut channels = drive_channels();
        let mut out = Vec::new();
        channels.start_all(&mut out);
        assert!(!out.is_empty(), "no Server Announce");
        let whole = |pdu: &[u8]| {
            let mut data = (pdu.len() as u32).to_le_bytes().to_vec();
            data.extend_from_slice(&3u32.to_le_bytes());
            data.extend_from_slice(pdu);
            data
        };
        for pdu in drives::channel_tests::client_handshake() {
            channels.process(1005, &whole(&pdu), &mut out);
        }
        assert!(!channels.drives_broken);
        channels.process(
            1005,
            &whole(&[0x72, 0x44, 0x41, 0x44, 5, 0, 0, 0]),
            &mut out,
        );
        assert!(channels.drives_broken);
        channels.process(1005, &whole(&drives::channel_tests::announce()), &mut out);
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(300), channels.next_event())
                .await;
        assert!(nothing.is_err(), "the ended channel announced: {nothing:?}");
    }
}
