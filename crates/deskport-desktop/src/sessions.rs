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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use super::launch::XServer;
use super::launch::{UnixAccount, XSession, XSessionSpec};
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
    /// Give each session its own sound (see [`crate::sound`]).
    pub sound: bool,
    /// Running as root: open a PAM session of this service for each session's account.
    pub pam_service: Option<String>,
}

/// One account's desktop.
struct Session {
    account: String,
    display: String,
    desktop: Arc<X11Desktop>,
    /// The X server can change the screen size.
    resizable: bool,
    x: Mutex<XSession>,
    /// Bumped by every attach: an older attachment sees it and gives up (takeover).
    generation: AtomicU64,
    /// Attached clients, and when the last one left.
    attached: Mutex<(usize, Instant)>,
    /// The keyboard layout last given to the X server (a Windows layout identifier).
    keyboard_layout: Mutex<Option<u32>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({} on {})", self.account, self.display)
    }
}

impl Session {
    /// Whether the session's first program (the session itself) has exited.
    fn logged_off(&self) -> bool {
        self.x
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .logged_off()
    }

    fn stop(&self) {
        self.x.lock().unwrap_or_else(|e| e.into_inner()).stop();
    }

    /// Switches the X server's keyboard to the XKB layout of `klid` (`setxkbmap`), unless it
    /// has that one already; an unknown layout leaves it as it is.
    fn set_keyboard_layout(&self, klid: u32) -> anyhow::Result<()> {
        let mut current = self
            .keyboard_layout
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *current == Some(klid) {
            return Ok(());
        }
        let Some((layout, variant)) = super::keymap::xkb_layout(klid) else {
            tracing::info!(
                account = self.account,
                keyboard_layout = format!("{klid:#010x}"),
                "Unknown keyboard layout: the session keeps its own"
            );
            return Ok(());
        };
        let output = std::process::Command::new("setxkbmap")
            .args([
                "-display",
                &self.display,
                "-layout",
                layout,
                "-variant",
                variant,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                anyhow::anyhow!("cannot run setxkbmap ({e}); the x11-xkb-utils package provides it")
            })?;
        anyhow::ensure!(
            output.status.success(),
            "setxkbmap -layout {layout} -variant {variant:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        tracing::info!(
            account = self.account,
            x_display = self.display,
            keyboard_layout = format!("{klid:#010x}"),
            layout,
            variant,
            "Keyboard layout set"
        );
        *current = Some(klid);
        Ok(())
    }
}

/// The provider of virtual sessions.
#[derive(Debug)]
pub struct VirtualSessions {
    config: SessionConfig,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// The Unix account a session of `name` runs as; `None` when not running as root (every
/// session runs as the server's own user then).
fn unix_account(name: &str) -> anyhow::Result<Option<UnixAccount>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    UnixAccount::lookup(name).map(Some).with_context(|| {
        format!(
            "no desktop for {name:?}: running as root, deskport does not give a desktop as root \
             to an RDP account without a Unix account of its own (add one with useradd)"
        )
    })
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

    fn start(
        &self,
        account: &str,
        size: (u16, u16),
        remote: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Arc<Session>> {
        let run_as = unix_account(self.config.unix_user.as_deref().unwrap_or(account))?;
        std::fs::create_dir_all(&self.config.log_dir)
            .with_context(|| format!("create {}", self.config.log_dir.display()))?;
        let log_path = self.config.log_dir.join(format!("session-{account}.log"));
        let x = XSession::start(&XSessionSpec {
            x_server: self.config.x_server,
            size,
            commands: &self.config.commands,
            run_as: run_as.as_ref(),
            log: &log_path,
            account: Some(account),
            sound: self.config.sound,
            pam_service: self.config.pam_service.as_deref(),
            remote_host: remote.map(|ip| ip.to_string()).as_deref(),
        })?;
        let display = x.display().to_owned();
        let x_server = x.x_server();
        // (On an error, dropping the XSession stops what it started.)
        let desktop = Arc::new(X11Desktop::connect_with(
            &display,
            self.config.capture,
            self.config.capture_shm,
        )?);
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
            x: Mutex::new(x),
            generation: AtomicU64::new(0),
            attached: Mutex::new((0, Instant::now())),
            keyboard_layout: Mutex::new(None),
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
        remote: Option<std::net::IpAddr>,
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
                let s = self.start(account, size, remote)?;
                let old = {
                    let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    sessions.insert(key, s.clone())
                };
                // (Stopped outside the lock: it takes seconds, and other logons wait for it.)
                if let Some(old) = old {
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

    fn sound(
        &self,
        rate: u32,
        channels: u16,
        chunk: Duration,
    ) -> Option<anyhow::Result<crate::sound::SoundCapture>> {
        let x = self.session.x.lock().unwrap_or_else(|e| e.into_inner());
        x.sound().map(|s| s.capture(rate, channels, chunk))
    }

    fn drives_home(&self) -> Option<crate::drives::DrivesHome> {
        let x = self.session.x.lock().unwrap_or_else(|e| e.into_inner());
        x.drives_home().cloned()
    }

    fn set_keyboard_layout(&self, klid: u32) -> anyhow::Result<()> {
        self.current()?;
        self.session.set_keyboard_layout(klid)
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

    fn clipboard(&self) -> Option<anyhow::Result<crate::clipboard::Clipboard>> {
        self.session.desktop.clipboard()
    }

    fn drawn(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.session.desktop.drawn()
    }

    fn changes_since(&self, generation: u64) -> Option<Vec<Area>> {
        self.session.desktop.changes_since(generation)
    }
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
