//! A PulseAudio daemon of the test's: a client side's sound card (one null sink, `out`), for
//! the sound tests and the sound benchmark to play into and record from.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{wait_until, ProcessGuard};

/// The daemon (stopped on drop), listening on a socket in the test's directory.
#[derive(Debug)]
pub struct PulseAudio {
    socket: PathBuf,
    _daemon: ProcessGuard,
}

impl PulseAudio {
    /// Starts it with its socket, state and log (`client-pulse.log`) in `dir`.
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("client-pulse");
        let daemon = ProcessGuard::spawn(
            "pulseaudio",
            Command::new("pulseaudio")
                .args([
                    "--daemonize=no",
                    "--exit-idle-time=-1",
                    "--use-pid-file=no",
                    "--system=no",
                    "-n",
                    "--log-target=stderr",
                    "--log-level=error",
                ])
                .arg(format!(
                    "--load=module-native-protocol-unix socket={} auth-anonymous=1",
                    socket.display()
                ))
                .arg("--load=module-null-sink sink_name=out rate=44100 channels=2")
                .env("HOME", dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("client-pulse.log")).unwrap()),
        )
        .unwrap();
        wait_until(Duration::from_secs(10), "the test's PulseAudio", || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(|_| ())
        });
        Self {
            socket,
            _daemon: daemon,
        }
    }

    /// `PULSE_SERVER` for its clients.
    pub fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Starts recording the sink for `seconds` (16-bit stereo at 44.1 kHz) into `file`.
    pub fn record(&self, file: &Path, seconds: u32) -> ProcessGuard {
        ProcessGuard::spawn(
            "parec",
            Command::new("timeout")
                .arg(seconds.to_string())
                .args([
                    "parec",
                    "--device=out.monitor",
                    "--raw",
                    "--format=s16le",
                    "--rate=44100",
                    "--channels=2",
                ])
                .env("PULSE_SERVER", self.server())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(file).unwrap())
                .stderr(Stdio::null()),
        )
        .unwrap()
    }
}

/// Writes interleaved stereo 16-bit `samples` at 44.1 kHz as a WAV file `path` (mode 0644, so
/// a session's account can play it).
pub fn write_wav(path: &Path, samples: &[i16]) {
    const RATE: u32 = 44_100;
    let data_len = u32::try_from(samples.len() * 2).expect("a WAV file under 4 GB");
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&2u16.to_le_bytes()); // channels
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 4).to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
