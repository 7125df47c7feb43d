//! A session's sound: its own PulseAudio daemon with one null sink, and captures of that sink
//! for the clients that play it (as pulseaudio-module-xrdp gives xrdp's sessions a sink).
//!
//! The daemon runs as the session's account (`-n`: only the modules given here), listening on
//! a socket of the session's own in the account's runtime directory (a private directory of
//! its own when sessions run as this process's user: the socket admits whoever reaches it);
//! the session's programs find it through `PULSE_SERVER`. So two sessions of one account (or of every account mapped
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
    /// The private directory made for the socket (removed on stop), if it is not the
    /// account's runtime directory.
    private: Option<PathBuf>,
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
        // The socket admits anyone who reaches it (auth-anonymous): it lives only in a
        // directory no one else can enter — the account's runtime directory (0700, its own),
        // or a private one made here when the sessions run as this process's user.
        let (dir, private) = match run_as {
            Some(account) => {
                let dir = environment
                    .iter()
                    .find(|(k, _)| k == "XDG_RUNTIME_DIR")
                    .map(|(_, v)| PathBuf::from(v))
                    .context("the session has no runtime directory for its sound")?;
                private_to(&dir, account.uid)?;
                (dir, None)
            }
            None => {
                let dir = private_dir(display)?;
                (dir.clone(), Some(dir))
            }
        };
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
            private,
            run_as: run_as.cloned(),
            environment: environment.to_vec(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("PulseAudio exited ({status}); see {}", log.display());
            }
            if std::os::unix::net::UnixStream::connect(&server.socket).is_ok() {
                return Ok(server);
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
        // About half a second queued at most: when the session cannot send as fast as the
        // sound plays (a slow link), chunks are dropped rather than delayed, so the sound
        // never lags behind the screen for good.
        let queued = (500 / chunk.as_millis().max(1)).max(2) as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(queued);
        std::thread::Builder::new()
            .name("sound-capture".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; bytes];
                if stdout.read_exact(&mut buf).is_err() {
                    return;
                }
                match tx.try_send((Instant::now(), buf)) {
                    Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                }
            })
            .context("start the sound capture's reader")?;
        Ok(SoundCapture {
            child: Some(child),
            pcm: rx,
        })
    }

    /// Stops the daemon.
    pub fn stop(&mut self) {
        crate::launch::stop_group(&mut self.child);
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.private.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
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

/// What a session plays, as it plays it (stops `parec` on drop, without waiting for it).
#[derive(Debug)]
pub struct SoundCapture {
    child: Option<Child>,
    pcm: tokio::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
}

impl SoundCapture {
    /// The next chunk of PCM and when it was read; `None` once the capture has ended.
    pub async fn next(&mut self) -> Option<(Instant, Vec<u8>)> {
        self.pcm.recv().await
    }
}

impl Drop for SoundCapture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Dropped in a session's task: stopping and reaping happen on a thread.
            let _ = std::thread::Builder::new()
                .name("sound-capture-stop".into())
                .spawn(move || crate::launch::stop_group(&mut child));
        }
    }
}

/// Checks that `dir` is a directory of `uid`'s that no one else may enter.
fn private_to(dir: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("the runtime directory {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0,
        "{} is not a private directory of the session's account",
        dir.display()
    );
    Ok(())
}

/// A new directory only this process's user may enter, for the socket of the session on
/// `display` (made atomically: an existing path of the same name is an error, not reused).
fn private_dir(display: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "deskport-sound-{}-{n}-{}",
        std::process::id(),
        display.trim_start_matches(':')
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
