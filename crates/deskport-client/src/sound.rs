//! Playing the session's sound (`deskport connect --audio`): the `rdpsnd` channel's client
//! takes IMA ADPCM or PCM (`deskport_proto::sound`), decodes each wave to 16-bit PCM and hands
//! it to PulseAudio's `pacat` (the pulseaudio-utils package), started at the first wave with
//! the format's rate and channels. A writer thread feeds `pacat`, so a stalled sound server
//! drops sound rather than holding the session: at most about a second is queued.

use std::borrow::Cow;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use ironrdp_rdpsnd::client::{Rdpsnd, RdpsndClientHandler};
use ironrdp_rdpsnd::codec::AudioDecoder;
use ironrdp_rdpsnd::pdu::{AudioFormat, AudioFormatFlags, PitchPdu, VolumePdu};

/// The channel's processor to attach to the connector.
pub fn processor() -> Rdpsnd {
    Rdpsnd::new(Box::new(Player {
        formats: vec![deskport_proto::sound::adpcm(), deskport_proto::sound::pcm()],
        playback: None,
        failed: false,
    }))
}

#[derive(Debug)]
struct Player {
    formats: Vec<AudioFormat>,
    playback: Option<Playback>,
    /// pacat could not be started: sound is off for this session (said once).
    failed: bool,
}

#[derive(Debug)]
struct Playback {
    format: AudioFormat,
    decoder: AudioDecoder,
    pcm: Vec<i16>,
    child: Child,
    to_pacat: SyncSender<Vec<u8>>,
    dropped: u64,
}

impl Playback {
    fn start(format: &AudioFormat) -> anyhow::Result<Self> {
        let decoder = AudioDecoder::new(format)?;
        let mut child = Command::new("pacat")
            .args(["--playback", "--raw", "--format=s16le"])
            .arg(format!("--rate={}", format.n_samples_per_sec))
            .arg(format!("--channels={}", format.n_channels))
            .args(["--latency-msec=100", "--client-name=deskport"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run pacat ({e}); --audio plays through PulseAudio's pacat, which the pulseaudio-utils package provides"
                )
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("pacat's input"))?;
        // About a second of sound in waves of ~46 ms.
        let (tx, rx) = sync_channel::<Vec<u8>>(24);
        std::thread::Builder::new()
            .name("sound-playback".into())
            .spawn(move || {
                while let Ok(bytes) = rx.recv() {
                    if stdin.write_all(&bytes).is_err() {
                        return;
                    }
                }
            })?;
        tracing::info!(
            format = format.format.to_string(),
            rate = format.n_samples_per_sec,
            channels = format.n_channels,
            "Playing the session's sound"
        );
        Ok(Self {
            format: format.clone(),
            decoder,
            pcm: Vec::new(),
            child,
            to_pacat: tx,
            dropped: 0,
        })
    }

    fn play(&mut self, data: &[u8]) {
        self.pcm.clear();
        if let Err(e) = self.decoder.decode(data, &mut self.pcm) {
            tracing::debug!(error = %e, "Undecodable sound wave skipped");
            return;
        }
        let bytes = self.pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        match self.to_pacat.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = self.dropped,
                        "The sound device does not keep up: waves dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Playback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RdpsndClientHandler for Player {
    fn get_flags(&self) -> AudioFormatFlags {
        AudioFormatFlags::ALIVE
    }

    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    fn wave(&mut self, format: &AudioFormat, _ts: u32, data: Cow<'_, [u8]>) {
        if self.failed {
            return;
        }
        if self.playback.as_ref().is_none_or(|p| p.format != *format) {
            self.playback = None;
            match Playback::start(format) {
                Ok(p) => self.playback = Some(p),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "No sound");
                    self.failed = true;
                    return;
                }
            }
        }
        if let Some(p) = &mut self.playback {
            p.play(&data);
        }
    }

    fn set_volume(&mut self, _volume: VolumePdu) {}

    fn set_pitch(&mut self, _pitch: PitchPdu) {}

    fn close(&mut self) {
        self.playback = None;
    }
}
