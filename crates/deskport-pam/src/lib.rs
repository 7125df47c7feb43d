//! A PAM session for a virtual desktop, as a display manager (or xrdp's sesman) opens one:
//! `pam_start(SERVICE, user)`, `PAM_TTY` and `PAM_XDISPLAY` set to the session's display and
//! `PAM_RHOST` to the client's address,
//! `pam_acct_mgmt` (an expired or refused account gets no desktop), `pam_setcred`,
//! `pam_open_session`, and the environment the modules set (`pam_getenvlist`: pam_env's
//! `/etc/environment`, pam_systemd's `XDG_*`…) for the session's programs; when the session
//! ends, `pam_close_session`, `pam_setcred(DELETE)` and `pam_end`.
//!
//! deskport authenticates its own accounts (NLA or the Client Info), so no module is asked for
//! a password: the conversation answers nothing (`PAM_CONV_ERR`), and a module that needs one
//! fails the session.
//!
//! [`PamHelper`] is what the RDP server uses: the session is held by a helper process
//! (`deskport pam-session`), never by the server itself.
//!
//! **The workspace's only unsafe code.** The FFI to libpam is declared here (linked as
//! `libpam.so.0`, which every PAM system has, so no development package is needed) and kept
//! to one thread per session: a PAM handle is not thread-safe, so [`PamSession::open`] runs the
//! whole life of the handle on a thread of its own, which ends it when the [`PamSession`] is
//! dropped. Invariants the unsafe blocks rely on are stated next to them.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::mpsc;

/// `pam_handle_t`, opaque.
#[repr(C)]
struct PamHandle {
    _private: [u8; 0],
}

/// `struct pam_message`.
#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

/// `struct pam_response`.
#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn =
    extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

#[link(name = "libpam.so.0", kind = "dylib", modifiers = "+verbatim")]
extern "C" {
    fn pam_start(
        service_name: *const c_char,
        user: *const c_char,
        pam_conversation: *const PamConv,
        pamh: *mut *mut PamHandle,
    ) -> c_int;
    fn pam_end(pamh: *mut PamHandle, pam_status: c_int) -> c_int;
    fn pam_set_item(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_acct_mgmt(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_setcred(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_open_session(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_getenvlist(pamh: *mut PamHandle) -> *mut *mut c_char;
    fn pam_strerror(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
}

const PAM_SUCCESS: c_int = 0;
const PAM_CONV_ERR: c_int = 19;
const PAM_TTY: c_int = 3;
const PAM_RHOST: c_int = 4;
const PAM_XDISPLAY: c_int = 11;
const PAM_SILENT: c_int = 0x8000;
const PAM_ESTABLISH_CRED: c_int = 0x0002;
const PAM_DELETE_CRED: c_int = 0x0004;

/// The conversation: deskport has nothing to tell or ask a user through PAM. (No pointer is
/// read, so this needs no unsafe code.)
extern "C" fn no_conversation(
    _num_msg: c_int,
    _msg: *mut *const PamMessage,
    _resp: *mut *mut PamResponse,
    _appdata_ptr: *mut c_void,
) -> c_int {
    PAM_CONV_ERR
}

/// Why a PAM session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PamError {
    #[error("PAM {step} failed: {message}")]
    Step { step: &'static str, message: String },
    #[error("a PAM argument holds a NUL byte")]
    Nul,
    #[error("the PAM session's thread: {0}")]
    Thread(String),
}

/// An open PAM session; closed (on its thread) when dropped.
#[derive(Debug)]
pub struct PamSession {
    close: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    environment: Vec<(String, String)>,
}

impl PamSession {
    /// Opens a session of the PAM service `service` for the Unix account `user` on the X
    /// display `display` (`:N`, also given as the TTY, as display managers do), for a client
    /// at `remote_host` (`PAM_RHOST`). Only root can open a session for another account.
    pub fn open(
        service: &str,
        user: &str,
        display: &str,
        remote_host: Option<&str>,
    ) -> Result<Self, PamError> {
        let service = CString::new(service).map_err(|_| PamError::Nul)?;
        let user = CString::new(user).map_err(|_| PamError::Nul)?;
        let display = CString::new(display).map_err(|_| PamError::Nul)?;
        let remote_host = remote_host
            .map(CString::new)
            .transpose()
            .map_err(|_| PamError::Nul)?;
        let (opened_tx, opened_rx) = mpsc::channel();
        let (close_tx, close_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pam-session".into())
            .spawn(move || {
                let handle = match Handle::open(&service, &user, &display, remote_host.as_deref()) {
                    Ok((handle, environment)) => {
                        let _ = opened_tx.send(Ok(environment));
                        handle
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                // Until the session ends (the sender is dropped).
                let _ = close_rx.recv();
                drop(handle);
            })
            .map_err(|e| PamError::Thread(e.to_string()))?;
        match opened_rx.recv() {
            Ok(Ok(environment)) => Ok(Self {
                close: Some(close_tx),
                thread: Some(thread),
                environment,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(PamError::Thread("ended without an answer".into())),
        }
    }

    /// The environment the session's modules set, for its programs.
    pub fn environment(&self) -> &[(String, String)] {
        &self.environment
    }
}

impl Drop for PamSession {
    fn drop(&mut self) {
        drop(self.close.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A PAM handle with an open session, on the thread that opened it (never sent elsewhere).
struct Handle {
    pamh: *mut PamHandle,
    /// Kept alive as long as the handle: libpam keeps a pointer to it.
    _conv: Box<PamConv>,
    status: c_int,
    session_open: bool,
    credentials: bool,
}

impl Handle {
    fn open(
        service: &CStr,
        user: &CStr,
        display: &CStr,
        remote_host: Option<&CStr>,
    ) -> Result<(Self, Vec<(String, String)>), PamError> {
        let conv = Box::new(PamConv {
            conv: Some(no_conversation),
            appdata_ptr: std::ptr::null_mut(),
        });
        let mut pamh: *mut PamHandle = std::ptr::null_mut();
        // SAFETY: the strings are NUL-terminated and outlive the call; `conv` is boxed and
        // kept in the handle for as long as libpam may use it; `pamh` is a valid out pointer.
        let status = unsafe { pam_start(service.as_ptr(), user.as_ptr(), &*conv, &mut pamh) };
        if status != PAM_SUCCESS || pamh.is_null() {
            return Err(PamError::Step {
                step: "pam_start",
                message: format!("error {status}"),
            });
        }
        let mut handle = Self {
            pamh,
            _conv: conv,
            status: PAM_SUCCESS,
            session_open: false,
            credentials: false,
        };
        let items = [
            (PAM_TTY, Some(display)),
            (PAM_XDISPLAY, Some(display)),
            (PAM_RHOST, remote_host),
        ];
        for (item, value) in items {
            let Some(value) = value else { continue };
            // SAFETY: `pamh` came from pam_start; libpam copies the string.
            let status = unsafe { pam_set_item(handle.pamh, item, value.as_ptr().cast()) };
            handle.check("pam_set_item", status)?;
        }
        // SAFETY (the three calls): `pamh` came from pam_start and is used on this thread only.
        let status = unsafe { pam_acct_mgmt(handle.pamh, PAM_SILENT) };
        handle.check("pam_acct_mgmt", status)?;
        let status = unsafe { pam_setcred(handle.pamh, PAM_ESTABLISH_CRED | PAM_SILENT) };
        handle.check("pam_setcred", status)?;
        handle.credentials = true;
        let status = unsafe { pam_open_session(handle.pamh, PAM_SILENT) };
        handle.check("pam_open_session", status)?;
        handle.session_open = true;
        let environment = handle.environment();
        Ok((handle, environment))
    }

    /// `Err` with PAM's message unless `status` is success (remembered for pam_end).
    fn check(&mut self, step: &'static str, status: c_int) -> Result<(), PamError> {
        if status == PAM_SUCCESS {
            return Ok(());
        }
        self.status = status;
        // SAFETY: `pamh` is valid; pam_strerror returns a static string or null.
        let message = unsafe {
            let text = pam_strerror(self.pamh, status);
            if text.is_null() {
                format!("error {status}")
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            }
        };
        Err(PamError::Step { step, message })
    }

    /// The PAM environment as `NAME=value` pairs (freed after copying).
    fn environment(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        // SAFETY: pam_getenvlist returns null or a malloc'd, null-terminated array of
        // malloc'd NUL-terminated strings that the caller owns; each string and then the
        // array are freed exactly once, after being copied.
        unsafe {
            let list = pam_getenvlist(self.pamh);
            if list.is_null() {
                return pairs;
            }
            let mut i = 0;
            loop {
                let entry = *list.add(i);
                if entry.is_null() {
                    break;
                }
                let text = CStr::from_ptr(entry).to_string_lossy().into_owned();
                if let Some((k, v)) = text.split_once('=') {
                    pairs.push((k.to_owned(), v.to_owned()));
                }
                nix::libc::free(entry.cast());
                i += 1;
            }
            nix::libc::free(list.cast());
        }
        pairs
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `pamh` came from pam_start, is used on this thread only, and pam_end is
        // called once, last.
        unsafe {
            if self.session_open {
                pam_close_session(self.pamh, PAM_SILENT);
            }
            if self.credentials {
                pam_setcred(self.pamh, PAM_DELETE_CRED | PAM_SILENT);
            }
            pam_end(self.pamh, self.status);
        }
    }
}

/// How long the helper may take to open a session.
pub const HELPER_ANSWER: std::time::Duration = std::time::Duration::from_secs(30);

/// A PAM session held by a helper process (the `deskport pam-session` subcommand, which runs
/// [`serve_helper`]), so the modules never act on the calling process: pam_systemd, for one,
/// moves the process that opens a session into that session's cgroup, and the RDP server must
/// not end up in a user's session. Closed (the helper told to end, then waited for) on drop.
#[derive(Debug)]
pub struct PamHelper {
    child: std::process::Child,
    environment: Vec<(String, String)>,
}

impl PamHelper {
    /// Starts `program` (deskport) as `subcommand [--remote-host HOST] -- SERVICE USER
    /// DISPLAY` and waits for its answer: at most [`HELPER_ANSWER`] (a module that hangs must
    /// not hold the logon forever; the helper is then killed).
    pub fn open(
        program: &std::path::Path,
        subcommand: &str,
        service: &str,
        user: &str,
        display: &str,
        remote_host: Option<&str>,
    ) -> Result<Self, PamError> {
        use std::io::BufRead as _;
        let mut command = std::process::Command::new(program);
        command.arg(subcommand);
        if let Some(host) = remote_host {
            command.args(["--remote-host", host]);
        }
        let mut child = command
            .args(["--", service, user, display])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| PamError::Thread(format!("start {}: {e}", program.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| PamError::Thread("no output".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pam-helper-answer".into())
            .spawn(move || {
                let mut environment = Vec::new();
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "opened" {
                        let _ = tx.send(Ok(environment));
                        return;
                    }
                    if let Some(message) = line.strip_prefix("failed ") {
                        let _ = tx.send(Err(message.to_owned()));
                        return;
                    }
                    if let Some((k, v)) = line.strip_prefix("env ").and_then(|l| l.split_once('='))
                    {
                        environment.push((k.to_owned(), v.to_owned()));
                    }
                }
                let _ = tx.send(Err("the helper ended without an answer".to_owned()));
            })
            .map_err(|e| PamError::Thread(e.to_string()))?;
        let answer = rx
            .recv_timeout(HELPER_ANSWER)
            .unwrap_or_else(|_| Err(format!("no answer within {HELPER_ANSWER:?}")));
        match answer {
            Ok(environment) => Ok(Self { child, environment }),
            Err(message) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(PamError::Step {
                    step: "session",
                    message,
                })
            }
        }
    }

    /// The environment the session's modules set, for its programs.
    pub fn environment(&self) -> &[(String, String)] {
        &self.environment
    }
}

impl Drop for PamHelper {
    fn drop(&mut self) {
        // End of input: the helper closes the session and exits.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helper's side (`deskport pam-session [--remote-host HOST] -- SERVICE USER DISPLAY`):
/// opens the session and writes `env NAME=value` lines and `opened` (or `failed MESSAGE`) to
/// `out`, then holds the session until `input` ends, and closes it. (`out` must be the
/// helper's own: what modules and their children print goes elsewhere.)
pub fn serve_helper(
    service: &str,
    user: &str,
    display: &str,
    remote_host: Option<&str>,
    input: &mut dyn std::io::Read,
    out: &mut dyn std::io::Write,
) -> Result<(), PamError> {
    let session = match PamSession::open(service, user, display, remote_host) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "failed {e}");
            let _ = out.flush();
            return Err(e);
        }
    };
    for (k, v) in session.environment() {
        if !k.contains(['\n', '=']) && !v.contains('\n') {
            let _ = writeln!(out, "env {k}={v}");
        }
    }
    let _ = writeln!(out, "opened");
    let _ = out.flush();
    let mut sink = [0u8; 64];
    while matches!(input.read(&mut sink), Ok(n) if n > 0) {}
    drop(session);
    Ok(())
}
