//! A session's sound: its own PulseAudio daemon with one null sink, and captures of that sink
//! for the clients that play it (as pulseaudio-module-xrdp gives xrdp's sessions a sink).
//!
//! The daemon runs as the session's account (`-n`: only the modules given here), listening on
//! a socket of the session's own in the account's runtime directory; the session's programs
//! find it through `PULSE_SERVER`. So two sessions of one account (or of every account mapped
//! to one Unix user) each have their own sound. A capture is `parec` of the sink's monitor,
//! run as the account too, its raw PCM read by a thread; it exists only while a client plays
//! the sound, so a client without sound costs nothing but the idle daemon.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::launch::UnixAccount;

/// The PulseAudio sink the session's programs play to.
pub const SINK: &str = "deskport";

/// A session's PulseAudio daemon (stopped on drop).
#[derive(Debug)]
pub struct SoundServer {
    child: Child,
    socket: PathBuf,
    run_as: Option<UnixAccount>,
    /// The environment the daemon and its captures run with (the login environment).
    environment: Vec<(String, String)>,
    log: PathBuf,
}

impl SoundServer {
    /// Whether sessions can have sound here (PulseAudio's daemon and `parec` are installed).
    pub fn available() -> bool {
        crate::launch::on_path("pulseaudio") && crate::launch::on_path("parec")
    }

    /// Starts the daemon of the session on X display `display` (`:N`) as `run_as` (with the
    /// login `environment`) or as this process's user; its output is appended to `log`. Ready
    /// when its socket accepts a connection.
    pub fn start(
        display: &str,
        run_as: Option<&UnixAccount>,
        environment: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            run_as.is_some() || !nix::unistd::geteuid().is_root(),
            "PulseAudio does not run a session's sound as root"
        );
        let dir = environment
            .iter()
            .find(|(k, _)| k == "XDG_RUNTIME_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let socket = dir.join(format!(
            "deskport-sound-{}",
            display.trim_start_matches(':')
        ));
        let _ = std::fs::remove_file(&socket);
        let mut command = as_account(run_as, environment, "pulseaudio");
        // An account without a home directory (`nobody`) keeps PulseAudio's cookie and state in
        // its runtime directory instead.
        let homeless = environment
            .iter()
            .find(|(k, _)| k == "HOME")
            .is_some_and(|(_, home)| !Path::new(home).is_dir());
        if homeless {
            command.env("XDG_CONFIG_HOME", &dir);
        }
        command
            .args([
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--log-target=stderr",
                "--log-level=error",
                "-n",
            ])
            // Only this account can reach the socket: it is in the account's 0700 directory.
            .arg(format!(
                "--load=module-native-protocol-unix socket={} auth-anonymous=1",
                socket.display()
            ))
            .arg(format!(
                "--load=module-null-sink sink_name={SINK} rate=44100 channels=2 \
                 sink_properties=device.description=Remote_audio"
            ))
            .stdin(Stdio::null())
            .stdout(crate::launch::append(log)?)
            .stderr(crate::launch::append(log)?)
            .process_group(0);
        let child = command
            .spawn()
            .context("start PulseAudio for the session's sound (the pulseaudio package)")?;
        let mut server = Self {
            child,
            socket,
            run_as: run_as.cloned(),
            environment: environment.to_vec(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(&server.socket).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("PulseAudio exited ({status}); see {}", log.display());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "PulseAudio's socket {} did not open within 10 s",
                server.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `PULSE_SERVER` for the session's programs.
    pub fn pulse_server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Starts reading what the session plays: interleaved signed 16-bit little-endian PCM at
    /// `rate` Hz with `channels` channels (PulseAudio converts), delivered in chunks of about
    /// `chunk` worth of sound.
    pub fn capture(
        &self,
        rate: u32,
        channels: u16,
        chunk: Duration,
    ) -> anyhow::Result<SoundCapture> {
        anyhow::ensure!(
            (1..=2).contains(&channels) && (8000..=192_000).contains(&rate),
            "cannot capture {channels} channels at {rate} Hz"
        );
        let mut command = as_account(self.run_as.as_ref(), &self.environment, "parec");
        command
            .env("PULSE_SERVER", self.pulse_server())
            .arg(format!("--device={SINK}.monitor"))
            .args(["--raw", "--format=s16le"])
            .arg(format!("--rate={rate}"))
            .arg(format!("--channels={channels}"))
            .arg(format!("--latency-msec={}", chunk.as_millis().max(5)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(crate::launch::append(&self.log)?)
            .process_group(0);
        let mut child = command.spawn().context("start parec")?;
        let mut stdout = child.stdout.take().context("parec's output")?;
        let frame = usize::from(channels) * 2;
        let bytes = (rate as usize * frame * chunk.as_millis() as usize / 1000).max(frame);
        let bytes = bytes - bytes % frame;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        std::thread::Builder::new()
            .name("sound-capture".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; bytes];
                if stdout.read_exact(&mut buf).is_err() || tx.blocking_send(buf).is_err() {
                    return;
                }
            })
            .context("start the sound capture's reader")?;
        Ok(SoundCapture { child, pcm: rx })
    }

    /// Stops the daemon.
    pub fn stop(&mut self) {
        crate::launch::stop_group(&mut self.child);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for SoundServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` as `run_as` with only the login `environment` (or as this process's user).
fn as_account(
    run_as: Option<&UnixAccount>,
    environment: &[(String, String)],
    program: &str,
) -> Command {
    match run_as {
        Some(account) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", account.uid))
                .arg(format!("--regid={}", account.gid))
                .args(["--init-groups", "--", program])
                .env_clear()
                .envs(environment.iter().map(|(k, v)| (k, v)));
            c
        }
        None => Command::new(program),
    }
}

/// What a session plays, as it plays it (stops `parec` on drop).
#[derive(Debug)]
pub struct SoundCapture {
    child: Child,
    pcm: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

impl SoundCapture {
    /// The next chunk of PCM; `None` once the capture has ended.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.pcm.recv().await
    }
}

impl Drop for SoundCapture {
    fn drop(&mut self) {
        crate::launch::stop_group(&mut self.child);
    }
}
