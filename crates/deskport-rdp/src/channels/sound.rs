//! Sound (`rdpsnd`, static channel, server role, MS-RDPEA): what the session plays, captured
//! from its PulseAudio sink (`deskport_desktop::sound`) and sent as waves in the format the
//! client accepted.
//!
//! The channel's processor negotiates (formats, quality mode, training) and reports the
//! format it chose as [`SoundEvent::Start`]; only then does the session start capturing, so a
//! client that does not join the channel, or offers no format in common, costs nothing. Each
//! chunk of PCM is encoded ([`SoundCodec`]) and sent with its capture time in milliseconds.

use std::time::{Duration, Instant};

use deskport_desktop::sound::SoundCapture;
use deskport_desktop::Desktop;
use ironrdp_rdpsnd::codec::AudioEncoder;
use ironrdp_rdpsnd::pdu::AudioFormat;
use ironrdp_rdpsnd::server::{NegotiatedFormat, RdpsndError, RdpsndServer, RdpsndServerHandler};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How the sound is coded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoundCodec {
    /// IMA ADPCM (4 bits a sample: a quarter of PCM's bytes) where the client decodes it
    /// (mstsc does), else PCM. (xfreerdp 2.11 takes no ADPCM; it takes G.711 A-law and µ-law
    /// but plays them as a constant: they are not offered.)
    #[default]
    Auto,
    /// 16-bit PCM only, uncompressed (1.4 Mbit/s for 44.1 kHz stereo).
    Pcm,
}

/// How much sound a captured chunk holds (and so the least delay the capture adds).
pub const CHUNK: Duration = Duration::from_millis(40);

/// The formats offered, in the server's preference order.
fn formats(codec: SoundCodec) -> Vec<AudioFormat> {
    use deskport_proto::sound::{adpcm, pcm};
    match codec {
        SoundCodec::Auto => vec![adpcm(), pcm()],
        SoundCodec::Pcm => vec![pcm()],
    }
}

/// What the channel reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoundEvent {
    /// The client accepted this format: start sending.
    Start(AudioFormat),
    /// The channel is done (closed or torn down).
    Stop,
}

/// The channel's handler: offers the formats, reports the choice.
#[derive(Debug)]
struct Handler {
    formats: Vec<AudioFormat>,
    events: UnboundedSender<SoundEvent>,
}

impl RdpsndServerHandler for Handler {
    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    fn choose_format<'a>(
        &mut self,
        common: &'a [NegotiatedFormat],
    ) -> Option<&'a NegotiatedFormat> {
        // In the server's order: the first one the client has in common is the one we prefer.
        common.iter().find(|f| AudioEncoder::supports(f.format()))
    }

    fn start(&mut self, format: &NegotiatedFormat) -> Result<(), Box<dyn RdpsndError>> {
        let _ = self.events.send(SoundEvent::Start(format.format().clone()));
        Ok(())
    }

    fn stop(&mut self) {
        let _ = self.events.send(SoundEvent::Stop);
    }
}

/// The processor to attach to the acceptor, and where its events arrive.
pub fn processor(codec: SoundCodec) -> (RdpsndServer, UnboundedReceiver<SoundEvent>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Handler {
        formats: formats(codec),
        events: tx,
    };
    (RdpsndServer::new(Box::new(handler)), rx)
}

/// A session's sound: the channel's events and, once a format is chosen, the capture and
/// its encoder.
#[derive(Debug)]
pub struct Sound {
    events: Option<UnboundedReceiver<SoundEvent>>,
    stream: Option<Stream>,
}

#[derive(Debug)]
struct Stream {
    capture: SoundCapture,
    encoder: AudioEncoder,
    started: Instant,
    samples: Vec<i16>,
    wave: Vec<u8>,
    /// Silent chunks in a row (see [`QUIET_CHUNKS`]).
    silent: u32,
}

/// Silent chunks sent after the last sound (enough to complete an ADPCM block, so the sound's
/// end is heard); after them nothing is sent until there is sound again. (The sink's monitor
/// yields zeros whenever nothing plays: without this an idle session would stream silence.)
const QUIET_CHUNKS: u32 = 3;

/// What [`Sound::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoundNext {
    Event(SoundEvent),
    /// Captured PCM (interleaved 16-bit little-endian) and when it was read.
    Pcm(Instant, Vec<u8>),
}

impl Sound {
    pub fn new(events: Option<UnboundedReceiver<SoundEvent>>) -> Self {
        Self {
            events,
            stream: None,
        }
    }

    /// The next event or chunk (never resolves while there is none).
    pub async fn next(&mut self) -> SoundNext {
        loop {
            tokio::select! {
                event = deskport_proto::next(&mut self.events) => match event {
                    Some(event) => return SoundNext::Event(event),
                    None => self.events = None,
                },
                pcm = async {
                    match &mut self.stream {
                        Some(s) => s.capture.next().await,
                        None => std::future::pending().await,
                    }
                } => match pcm {
                    Some((at, pcm)) => return SoundNext::Pcm(at, pcm),
                    None => {
                        tracing::warn!("The session's sound capture ended");
                        self.stream = None;
                    }
                },
            }
        }
    }

    /// Starts capturing `desktop`'s sound for `format`; false if the desktop has none.
    pub fn start(&mut self, desktop: &dyn Desktop, format: &AudioFormat) -> bool {
        let encoder = match AudioEncoder::new(format) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "No encoder for the chosen sound format");
                return false;
            }
        };
        let capture = match desktop.sound(format.n_samples_per_sec, format.n_channels, CHUNK) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "The session's sound cannot be captured"
                );
                return false;
            }
            None => {
                tracing::info!("This desktop has no sound to send");
                return false;
            }
        };
        tracing::info!(
            format = format.format.to_string(),
            rate = format.n_samples_per_sec,
            channels = format.n_channels,
            "Sound started"
        );
        self.stream = Some(Stream {
            capture,
            encoder,
            started: Instant::now(),
            samples: Vec::new(),
            wave: Vec::new(),
            silent: QUIET_CHUNKS,
        });
        true
    }

    /// Stops capturing.
    pub fn stop(&mut self) {
        if self.stream.take().is_some() {
            tracing::info!("Sound stopped");
        }
    }

    /// Encodes `pcm`, read at `at`; the wave to send and its timestamp (the milliseconds from
    /// the start of the stream to when it was captured, wrapping), if a whole block is ready.
    /// Silence is not sent (after [`QUIET_CHUNKS`]).
    pub fn encode(&mut self, at: Instant, pcm: &[u8]) -> Option<(Vec<u8>, u32)> {
        let stream = self.stream.as_mut()?;
        if pcm.iter().all(|b| *b == 0) {
            if stream.silent >= QUIET_CHUNKS {
                return None;
            }
            stream.silent += 1;
        } else {
            stream.silent = 0;
        }
        stream.samples.clear();
        stream.samples.extend(
            pcm.chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        stream.wave.clear();
        stream.encoder.encode(&stream.samples, &mut stream.wave);
        if stream.wave.is_empty() {
            return None;
        }
        // (MS-RDPEA timestamps wrap; only their differences count.)
        let ts = at.saturating_duration_since(stream.started).as_millis() as u32;
        Some((std::mem::take(&mut stream.wave), ts))
    }
}

/// What a client sends to negotiate sound as xfreerdp does: its formats (PCM only), its
/// quality mode, the training confirm.
#[cfg(test)]
pub(crate) fn client_negotiation() -> [ironrdp_rdpsnd::pdu::ClientAudioOutputPdu; 3] {
    use ironrdp_rdpsnd::pdu::{
        AudioFormatFlags, ClientAudioFormatPdu, ClientAudioOutputPdu, QualityMode, QualityModePdu,
        TrainingConfirmPdu, Version,
    };
    [
        ClientAudioOutputPdu::AudioFormat(ClientAudioFormatPdu {
            version: Version::V8,
            flags: AudioFormatFlags::ALIVE | AudioFormatFlags::VOLUME,
            formats: vec![deskport_proto::sound::pcm()],
            volume_left: 0xffff,
            volume_right: 0xffff,
            pitch: 0,
            dgram_port: 0,
        }),
        ClientAudioOutputPdu::QualityMode(QualityModePdu {
            quality_mode: QualityMode::High,
        }),
        ClientAudioOutputPdu::TrainingConfirm(TrainingConfirmPdu {
            timestamp: 4231,
            pack_size: 0,
        }),
    ]
}
