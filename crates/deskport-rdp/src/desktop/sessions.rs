//! Virtual desktops, one per account, as a Windows instance gives each user their own session:
//! the first logon starts an X server (Xvnc where installed, else Xvfb; at the client's size)
//! and the session command; on Xvnc the screen follows later size requests (RandR) and a
//! reattaching client's size;
//! a disconnect keeps the session and a later logon reattaches to the same windows; a second
//! client of the same account takes the session over (the first is disconnected); the session
//! ends when its command exits (logoff) or after it stayed disconnected for the timeout.
//!
//! Running as root, the session's programs run as the Unix account of the same name (with its
//! home directory, shell and groups); an account without one is refused rather than given a
//! desktop as root. Running as another user, every session runs as that user.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::x11::X11Desktop;
use super::{Area, Desktop, DesktopProvider, Frame, Input};

/// How sessions are made and when they end.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The session's programs, each a command line run by `sh -c` (the first one is the
    /// session: when it exits, the user has logged off).
    pub commands: Vec<String>,
    /// End a session that has had no client for this long.
    pub disconnected_timeout: Duration,
    /// The size of a new session when the client asks for none.
    pub default_size: (u16, u16),
    /// Where the X servers' and sessions' output goes.
    pub log_dir: PathBuf,
    /// Running as root: run every session as this Unix account instead of the one named like
    /// the RDP account (e.g. the instance's only user).
    pub unix_user: Option<String>,
    /// How the sessions' screens are read.
    pub capture: super::x11::Capture,
    /// The sessions' X server.
    pub x_server: XServer,
    /// Read screen images through MIT-SHM where the X server offers it.
    pub capture_shm: bool,
}

/// The X server of virtual sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XServer {
    /// Xvnc where it is installed (its screen follows the client's size), else Xvfb.
    #[default]
    Auto,
    /// Xvfb: the screen keeps the size of the first logon.
    Xvfb,
    /// TigerVNC's Xvnc with its VNC port closed: the screen changes size when the client
    /// asks (RandR).
    Xvnc,
}

impl XServer {
    /// `Auto` made concrete: Xvnc if it is on `PATH`, else Xvfb.
    pub fn resolve(self) -> Self {
        // (Xvnc is looked up on PATH each time: installing it takes effect for new sessions.)
        match self {
            Self::Auto if on_path("Xvnc") => Self::Xvnc,
            Self::Auto => Self::Xvfb,
            other => other,
        }
    }

    /// The program and the Debian package that provides it.
    fn program(self) -> (&'static str, &'static str) {
        match self.resolve() {
            Self::Xvnc => ("Xvnc", "tigervnc-standalone-server"),
            _ => ("Xvfb", "xvfb"),
        }
    }
}

/// Whether an executable `program` is in one of `PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

impl SessionConfig {
    /// A window manager and a terminal (the session ends when the window manager exits).
    pub fn default_commands() -> Vec<String> {
        vec![
            "exec openbox".to_owned(),
            "exec xterm -geometry 100x30+40+40".to_owned(),
        ]
    }
}

/// One account's desktop.
struct Session {
    account: String,
    display: String,
    desktop: Arc<X11Desktop>,
    /// The X server can change the screen size.
    resizable: bool,
    children: Mutex<Vec<Child>>,
    /// Bumped by every attach: an older attachment sees it and gives up (takeover).
    generation: AtomicU64,
    /// Attached clients, and when the last one left.
    attached: Mutex<(usize, Instant)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({} on {})", self.account, self.display)
    }
}

impl Session {
    /// Whether the session's first program (the session itself) has exited.
    fn logged_off(&self) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        // children[0] is the X server, children[1] the session command.
        children
            .get_mut(1)
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    fn stop(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // Each program leads its own process group: stop what it started too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in children.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

/// The provider of virtual sessions.
#[derive(Debug)]
pub struct VirtualSessions {
    config: SessionConfig,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// The Unix account a session runs as: (name, uid, gid, home, shell).
type UnixAccount = (String, u32, u32, PathBuf, PathBuf);

fn unix_account(name: &str) -> anyhow::Result<Option<UnixAccount>> {
    // (Not root: every session runs as the server's own user.)
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(name)
        .context("look up the Unix account")?
        .with_context(|| {
            format!(
                "there is no Unix account {name:?} to run the session as (running as root, deskport \
                 does not give a desktop as root to an RDP account without one; add it with useradd)"
            )
        })?;
    Ok(Some((
        user.name,
        user.uid.as_raw(),
        user.gid.as_raw(),
        user.dir,
        user.shell,
    )))
}

impl VirtualSessions {
    pub fn new(config: SessionConfig) -> Arc<Self> {
        let this = Arc::new(Self {
            config,
            sessions: Mutex::new(HashMap::new()),
        });
        // The janitor: ends sessions that logged off or stayed disconnected too long.
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("deskport-sessions".into())
            .spawn(move || {
                while let Some(this) = weak.upgrade() {
                    this.sweep();
                    drop(this);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
            .ok();
        this
    }

    /// The displays of the running sessions, by account (for logs and tests).
    pub fn displays(&self) -> Vec<(String, String)> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .values()
            .map(|s| (s.account.clone(), s.display.clone()))
            .collect()
    }

    fn sweep(&self) {
        let ended: Vec<Arc<Session>> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| {
                    let (attached, since) = *s.attached.lock().unwrap_or_else(|e| e.into_inner());
                    s.logged_off()
                        || (attached == 0 && since.elapsed() >= self.config.disconnected_timeout)
                })
                .map(|(k, _)| k.clone())
                .collect();
            expired.iter().filter_map(|k| sessions.remove(k)).collect()
        };
        for s in ended {
            let reason = if s.logged_off() {
                "logged off"
            } else {
                "disconnected too long"
            };
            tracing::info!(
                account = s.account,
                x_display = s.display,
                reason,
                "Session ended"
            );
            // Attached clients see the generation change and are disconnected.
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.stop();
        }
    }

    fn start(&self, account: &str, size: (u16, u16)) -> anyhow::Result<Arc<Session>> {
        let run_as = unix_account(self.config.unix_user.as_deref().unwrap_or(account))?;
        std::fs::create_dir_all(&self.config.log_dir)
            .with_context(|| format!("create {}", self.config.log_dir.display()))?;
        let log_path = self.config.log_dir.join(format!("session-{account}.log"));
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("open {}", log_path.display()))
        };
        let x_server = self.config.x_server.resolve();
        let (server, display) = start_x_server(x_server, size, &log_path, true)?;
        let mut children = vec![server];
        let spawn = |command: &str| -> anyhow::Result<Child> {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(command)
                .env("DISPLAY", &display)
                .stdin(Stdio::null())
                .stdout(log()?)
                .stderr(log()?)
                .process_group(0);
            if let Some((name, uid, gid, home, shell)) = &run_as {
                c.uid(*uid)
                    .gid(*gid)
                    .env("HOME", home)
                    .env("USER", name)
                    .env("LOGNAME", name)
                    .env("SHELL", shell)
                    .current_dir(if home.is_dir() {
                        home.as_path()
                    } else {
                        Path::new("/")
                    });
            } else if let Some(home) = std::env::var_os("HOME") {
                c.current_dir(home);
            }
            c.spawn()
                .with_context(|| format!("start the session command {command:?}"))
        };
        // The user's programs must be able to use the display: with -displayfd and no
        // -auth, the X server accepts local clients.
        for command in &self.config.commands {
            match spawn(command) {
                Ok(child) => children.push(child),
                Err(e) => {
                    for c in children.iter_mut().rev() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(e);
                }
            }
        }
        let desktop = match X11Desktop::connect_with(
            &display,
            self.config.capture,
            self.config.capture_shm,
        ) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                for c in children.iter_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        };
        let x_display = display.clone();
        tracing::info!(
            account,
            x_display,
            x_server = x_server.program().0,
            width = size.0,
            height = size.1,
            "Session started on a new desktop"
        );
        Ok(Arc::new(Session {
            account: account.to_owned(),
            display,
            desktop,
            resizable: x_server == XServer::Xvnc,
            children: Mutex::new(children),
            generation: AtomicU64::new(0),
            attached: Mutex::new((0, Instant::now())),
        }))
    }

    /// Ends every session (server shutdown).
    pub fn stop_all(&self) {
        let all: Vec<Arc<Session>> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.drain().map(|(_, s)| s).collect()
        };
        for s in all {
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.stop();
        }
    }
}

impl Drop for VirtualSessions {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl DesktopProvider for VirtualSessions {
    fn desktop_for(
        &self,
        account: &str,
        requested: (u16, u16),
    ) -> anyhow::Result<Arc<dyn Desktop>> {
        let key = account.to_ascii_lowercase();
        let size = if requested.0 == 0 || requested.1 == 0 {
            self.config.default_size
        } else {
            requested
        };
        let existing = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.get(&key).cloned()
        };
        let session = match existing.filter(|s| !s.logged_off()) {
            Some(s) => {
                tracing::info!(account, x_display = s.display, "Reattaching to the session");
                // The session takes the new client's size where the X server can.
                if s.resizable && s.desktop.size() != size {
                    if let Err(e) = s.desktop.resize(size.0, size.1) {
                        tracing::warn!(account, error = %e, "The session keeps its size");
                    }
                }
                s
            }
            None => {
                let s = self.start(account, size)?;
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = sessions.insert(key, s.clone()) {
                    old.generation.fetch_add(1, Ordering::SeqCst);
                    old.stop();
                }
                s
            }
        };
        // Take the session over from any client still attached.
        let generation = session.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut attached = session.attached.lock().unwrap_or_else(|e| e.into_inner());
            attached.0 += 1;
        }
        Ok(Arc::new(Attached {
            session,
            generation,
            size: Mutex::new(size),
        }))
    }

    fn initial_size(&self, _requested: (u16, u16)) -> (u16, u16) {
        self.config.default_size
    }

    fn honors_client_size(&self) -> bool {
        true
    }

    fn can_resize(&self) -> bool {
        self.config.x_server.resolve() == XServer::Xvnc
    }
}

/// One client's view of a session: gives up when another client takes the session over or
/// the session ends, and shows the session at the size this client negotiated (cropped or
/// padded when a reattaching client asked for another size than the session has).
#[derive(Debug)]
struct Attached {
    session: Arc<Session>,
    generation: u64,
    size: Mutex<(u16, u16)>,
}

impl Attached {
    fn current(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.session.generation.load(Ordering::SeqCst) == self.generation,
            "the session was taken over by another client, or it ended"
        );
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut attached = self
            .session
            .attached
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        attached.0 = attached.0.saturating_sub(1);
        attached.1 = Instant::now();
    }
}

/// `frame` at `size`: the overlapping part copied, the rest black.
fn fit(frame: Frame, size: (u16, u16)) -> Frame {
    if (frame.width, frame.height) == size {
        return frame;
    }
    let (w, h) = (usize::from(size.0), usize::from(size.1));
    let mut data = vec![0u8; w * h * 4];
    let copy_w = w.min(usize::from(frame.width)) * 4;
    for y in 0..h.min(usize::from(frame.height)) {
        let src = y * frame.stride();
        data[y * w * 4..y * w * 4 + copy_w].copy_from_slice(&frame.data[src..src + copy_w]);
    }
    Frame {
        width: size.0,
        height: size.1,
        data: Arc::new(data),
        generation: frame.generation,
    }
}

impl Desktop for Attached {
    fn size(&self) -> (u16, u16) {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn capture(&self) -> anyhow::Result<Frame> {
        self.current()?;
        Ok(fit(self.session.desktop.capture()?, self.size()))
    }

    fn can_resize(&self) -> bool {
        self.session.resizable
    }

    fn resize(&self, width: u16, height: u16) -> anyhow::Result<(u16, u16)> {
        self.current()?;
        anyhow::ensure!(
            self.session.resizable,
            "the session's X server cannot change its size"
        );
        let size = self.session.desktop.resize(width, height)?;
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) = size;
        Ok(size)
    }

    fn input(&self, event: Input) -> anyhow::Result<()> {
        self.current()?;
        self.session.desktop.input(event)
    }

    fn cursor(&self) -> Option<super::Cursor> {
        self.session.desktop.cursor()
    }

    fn pointer_moved(&self) -> Option<(u64, (u16, u16))> {
        self.session.desktop.pointer_moved()
    }

    fn x_display(&self) -> Option<String> {
        self.session.desktop.x_display()
    }

    fn changes_since(&self, generation: u64) -> Option<Vec<Area>> {
        self.session.desktop.changes_since(generation)
    }
}

/// Starts Xvfb with one `size` screen at 24-bit depth (see [`start_x_server`]).
pub fn start_xvfb(
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    start_x_server(XServer::Xvfb, size, log, own_group)
}

/// Starts an X server with one `size` screen at 24-bit depth, its errors appended to `log`;
/// it picks a free display number itself (`-displayfd`) and listens on no TCP port (Xvnc:
/// no VNC port either). `own_group`: in a process group of its own (so that a session can be
/// stopped as a whole). Returns the process and the display name.
pub fn start_x_server(
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    use std::os::unix::process::CommandExt as _;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let (program, package) = kind.program();
    let mut command = Command::new(program);
    command.args(["-displayfd", "1", "-nolisten", "tcp", "-noreset"]);
    if kind.resolve() == XServer::Xvnc {
        command
            .arg("-geometry")
            .arg(format!("{}x{}", size.0, size.1))
            .args(["-depth", "24", "-rfbport", "-1", "-SecurityTypes", "None"]);
    } else {
        command
            .args(["-screen", "0"])
            .arg(format!("{}x{}x24", size.0, size.1));
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if own_group {
        command.process_group(0);
    }
    let mut server = command.spawn().map_err(|e| {
        anyhow::anyhow!("cannot start {program} ({e}); the {package} package provides it (scripts/install-deps installs it)")
    })?;
    let mut line = String::new();
    if let Some(out) = server.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let Ok(number) = line.trim().parse::<u32>() else {
        let _ = server.kill();
        let _ = server.wait();
        anyhow::bail!("{program} did not start (see {})", log.display());
    };
    Ok((server, format!(":{number}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cropped_or_padded_to_the_clients_size() {
        let frame = Frame {
            width: 2,
            height: 2,
            data: Arc::new((0u8..16).collect()),
            generation: 0,
        };
        let bigger = fit(frame.clone(), (3, 1));
        assert_eq!(*bigger.data, vec![0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0]);
        let smaller = fit(frame.clone(), (1, 2));
        assert_eq!(*smaller.data, vec![0, 1, 2, 3, 8, 9, 10, 11]);
        assert_eq!(fit(frame, (2, 2)).data.len(), 16);
    }
}
