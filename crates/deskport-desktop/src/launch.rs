//! Starting X desktops: an X server on a free display number (its lock file taken), and a session's
//! programs on it, as one [`XSession`] that stops as a whole. Virtual sessions, `deskport up`
//! and the test fixtures all start their desktops here.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::sound::SoundServer;

/// The X server of a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XServer {
    /// Xvnc where it is installed (its screen follows the client's size), else Xvfb.
    #[default]
    Auto,
    /// Xvfb: the screen keeps the size it started with.
    Xvfb,
    /// TigerVNC's Xvnc with its VNC port closed: the screen changes size when asked (RandR).
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
    pub fn program(self) -> (&'static str, &'static str) {
        match self.resolve() {
            Self::Xvnc => ("Xvnc", "tigervnc-standalone-server"),
            _ => ("Xvfb", "xvfb"),
        }
    }
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Starts an X server with one `size` screen at 24-bit depth, its errors appended to `log`,
/// listening on no TCP port (Xvnc: no VNC port either). `own_group`: in a process group of its
/// own (so that a session can be stopped as a whole). Returns the process and the display name.
///
/// The display number is explicit: the lowest from [`FIRST_DISPLAY`] whose lock file
/// (`/tmp/.XN-lock`) and socket file (`/tmp/.X11-unix/XN`) are both absent. The X server
/// takes the lock atomically and refuses a number whose lock another live server holds; the
/// next number is then tried. (`-displayfd`, which lets the server pick, takes no lock and
/// judges a number free by its abstract socket alone, which is private to a network
/// namespace: a server started in another namespace then took a number in use and replaced
/// its socket file.) Ready when its socket file accepts a connection.
///
/// Only this process's Unix user may connect (see [`start_x_server_for`]).
pub fn start_x_server(
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    start_x_server_for(
        || Command::new(kind.program().0),
        kind,
        size,
        log,
        own_group,
        &[],
    )
}

/// The first display number deskport's X servers use (below it: the console's and the
/// displays ssh forwards).
pub const FIRST_DISPLAY: u32 = 10;

/// [`start_x_server`] through the commands `make` returns: the X server's program, or a
/// command that runs it (e.g. `ip netns exec NAME Xvfb`); the server's arguments are appended.
pub fn start_x_server_with(
    make: impl Fn() -> Command,
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    start_x_server_for(make, kind, size, log, own_group, &[])
}

/// [`start_x_server_with`], admitting the local Unix users `users` besides this process's
/// own, and no one else.
///
/// Without access control an X server admits every local process, so any account on the
/// instance could read another's session and type into it. The server starts with an
/// authority file holding a random cookie only this process knows (removed once the server
/// has read it); this process then connects with it and admits the users by their socket's
/// peer credentials (`si:localuser:NAME` in the server's host list, as `xhost` would add
/// them). Their programs need no cookie and no `XAUTHORITY`.
pub fn start_x_server_for(
    make: impl Fn() -> Command,
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
    users: &[&str],
) -> anyhow::Result<(Child, String)> {
    let cookie = Cookie::new()?;
    let (mut server, number) = launch_x_server(make, kind, size, log, own_group, &cookie)?;
    let display = format!(":{number}");
    let own = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .context("this process's Unix user has no name")?;
    let mut admitted: Vec<&str> = vec![own.as_str()];
    admitted.extend(users.iter().copied().filter(|u| *u != own));
    if let Err(e) = admit(number, &cookie, &admitted) {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e.context(format!("restrict access to the X server on {display}")));
    }
    Ok((server, display))
}

/// An X authority cookie and the file the X server reads it from (removed on drop).
struct Cookie {
    data: [u8; 16],
    file: PathBuf,
}

impl Cookie {
    fn new() -> anyhow::Result<Self> {
        use std::io::{Read as _, Write as _};
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut data = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut data))
            .context("read /dev/urandom")?;
        let tag: String = data[..6].iter().map(|b| format!("{b:02x}")).collect();
        let file =
            std::env::temp_dir().join(format!("deskport-xauth-{}-{tag}", std::process::id()));
        // One record: family Local, no address, no display number (the server takes every
        // record of its file), the cookie.
        let mut record = 256u16.to_be_bytes().to_vec();
        for field in [&b""[..], b"", b"MIT-MAGIC-COOKIE-1", &data] {
            record.extend_from_slice(&(field.len() as u16).to_be_bytes());
            record.extend_from_slice(field);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(&record))
            .with_context(|| format!("write {}", file.display()))?;
        Ok(Self { data, file })
    }
}

impl Drop for Cookie {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Connects to display `number` with `cookie` and puts `users` on its host list.
fn admit(number: u32, cookie: &Cookie, users: &[&str]) -> anyhow::Result<()> {
    use x11rb::protocol::xproto::{ConnectionExt as _, Family, HostMode};
    let stream = std::os::unix::net::UnixStream::connect(x_socket(number))
        .with_context(|| format!("connect to :{number}"))?;
    let (stream, _) = x11rb::rust_connection::DefaultStream::from_unix_stream(stream)?;
    let conn = x11rb::rust_connection::RustConnection::connect_to_stream_with_auth_info(
        stream,
        0,
        b"MIT-MAGIC-COOKIE-1".to_vec(),
        cookie.data.to_vec(),
    )
    .context("the X server refused its own cookie")?;
    for user in users {
        let address = format!("localuser\0{user}");
        conn.change_hosts(
            HostMode::INSERT,
            Family::SERVER_INTERPRETED,
            address.as_bytes(),
        )?
        .check()
        .with_context(|| format!("admit the local user {user}"))?;
    }
    Ok(())
}

/// Starts the X server on the first free display number that it gets; the process and the
/// number.
fn launch_x_server(
    make: impl Fn() -> Command,
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
    cookie: &Cookie,
) -> anyhow::Result<(Child, u32)> {
    const ATTEMPTS: u32 = 20;
    let (program, package) = kind.program();
    let mut from = FIRST_DISPLAY;
    for _ in 0..ATTEMPTS {
        let number = free_display(from)
            .with_context(|| format!("no free X display number from {from} on"))?;
        let mut command = make();
        command
            .arg(format!(":{number}"))
            .arg("-auth")
            .arg(&cookie.file)
            .args(["-nolisten", "tcp", "-noreset"]);
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
            .stdout(Stdio::null())
            .stderr(append(log)?);
        if own_group {
            command.process_group(0);
        }
        let mut server = command.spawn().map_err(|e| {
            anyhow::anyhow!("cannot start {program} ({e}); the {package} package provides it (scripts/install-deps installs it)")
        })?;
        match wait_ready(&mut server, number)? {
            true => return Ok((server, number)),
            // Exited: another server took the number first (or it cannot start at all, which
            // the next attempts show).
            false => from = number + 1,
        }
    }
    anyhow::bail!(
        "{program} did not start in {ATTEMPTS} attempts (see {})",
        log.display()
    )
}

/// The lowest display number from `from` with neither a lock file nor a socket file.
fn free_display(from: u32) -> Option<u32> {
    (from..from.saturating_add(1000))
        .find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists() && !x_socket(*n).exists())
}

/// The socket file of display `number`.
pub fn x_socket(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{number}"))
}

/// Waits until `server` holds the display's lock and accepts connections on its socket file
/// (true) or exits (false); an X server that does neither in 20 s is killed and an error.
/// (The lock names its holder's process: a server that lost the number to another one
/// started at the same moment is never taken for the winner.)
fn wait_ready(server: &mut Child, number: u32) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let socket = x_socket(number);
    let lock = format!("/tmp/.X{number}-lock");
    loop {
        if server.try_wait()?.is_some() {
            return Ok(false);
        }
        let holder = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if holder == Some(server.id()) && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            anyhow::bail!("the X server on :{number} did not accept connections in 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops `child` and what it started (its process group): SIGTERM, SIGKILL after 2 s.
pub(crate) fn stop_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    reap(child);
}

/// Waits up to 2 s for `child` (already told to stop) to exit, then kills it; reaped either way.
fn reap(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn append(log: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))
}

/// The Unix account a session's programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl UnixAccount {
    /// The account called `name`, from the system's user database.
    pub fn lookup(name: &str) -> anyhow::Result<Self> {
        let user = nix::unistd::User::from_name(name)
            .context("look up the Unix account")?
            .with_context(|| format!("there is no Unix account {name:?}"))?;
        Ok(Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        })
    }
}

/// What an [`XSession`] runs.
#[derive(Debug, Clone)]
pub struct XSessionSpec<'a> {
    pub x_server: XServer,
    pub size: (u16, u16),
    /// The session's programs, each a command line run by `sh -c` in a process group of its
    /// own (the first is the session: when it exits, the user has logged off).
    pub commands: &'a [String],
    /// Run the programs as this account (with its home, shell and name); `None`: as this
    /// process's user.
    pub run_as: Option<&'a UnixAccount>,
    /// Where the X server's and the programs' output goes (appended).
    pub log: &'a Path,
    /// The RDP account the session is for, given to its programs as `DESKPORT_ACCOUNT` (a
    /// session script can tell whose desktop it starts even when every account runs as the
    /// same Unix user).
    pub account: Option<&'a str>,
    /// Give the session its own sound (a PulseAudio daemon, see [`crate::sound`]) where
    /// PulseAudio is installed.
    pub sound: bool,
    /// Running as root with `run_as`: open a PAM session of this service for the account
    /// (see `deskport_pam`; held by `deskport pam-session`, this program's hidden subcommand)
    /// around the session's programs, where the system has PAM.
    pub pam_service: Option<&'a str>,
    /// The client's address, for the PAM session (`PAM_RHOST`: pam_access and friends judge
    /// a remote logon as remote).
    pub remote_host: Option<&'a str>,
}

/// An X server and the programs of a session on it. Stopped on drop: every program's process
/// group first (SIGTERM, then SIGKILL after 2 s), the X server last.
#[derive(Debug)]
pub struct XSession {
    display: String,
    x_server: XServer,
    /// The X server first, then the session's programs in order.
    children: Vec<Child>,
    /// The account whose runtime directory this session holds (released on stop).
    runtime_uid: Option<u32>,
    /// The session's sound, if it has any.
    sound: Option<SoundServer>,
    /// The session's PAM session (held by a helper process), if it has one: closed after
    /// the programs end.
    pam: Option<deskport_pam::PamHelper>,
    /// Whose home the client's drives go into.
    drives_home: Option<crate::drives::DrivesHome>,
}

impl XSession {
    pub fn start(spec: &XSessionSpec<'_>) -> anyhow::Result<Self> {
        let x_server = spec.x_server.resolve();
        let users: Vec<&str> = spec.run_as.iter().map(|a| a.name.as_str()).collect();
        let (server, display) = start_x_server_for(
            || Command::new(x_server.program().0),
            x_server,
            spec.size,
            spec.log,
            true,
            &users,
        )?;
        let mut session = Self {
            display,
            x_server,
            children: vec![server],
            runtime_uid: None,
            sound: None,
            pam: None,
            drives_home: drives_home(spec.run_as),
        };
        // The PAM session first: its modules may provide the runtime directory (pam_systemd),
        // which deskport then neither makes nor removes.
        if let (Some(account), Some(service)) = (spec.run_as, spec.pam_service) {
            if nix::unistd::geteuid().is_root() {
                session.pam = open_pam(service, account, &session.display, spec.remote_host)?;
            }
        }
        // The programs' user is on the X server's host list: they need no cookie.
        let login = spec.run_as.map(|account| {
            let pam = session
                .pam
                .as_ref()
                .map(|p| p.environment())
                .unwrap_or_default();
            let given = pam.iter().any(|(k, _)| k == "XDG_RUNTIME_DIR");
            let mut environment = login_environment(account, !given);
            if !given && environment.iter().any(|(k, _)| k == "XDG_RUNTIME_DIR") {
                session.runtime_uid = Some(account.uid);
            }
            merge_environment(&mut environment, pam);
            environment
        });
        if spec.sound && SoundServer::available() {
            let environment = login.as_deref().unwrap_or_default();
            match SoundServer::start(&session.display, spec.run_as, environment, spec.log) {
                Ok(sound) => session.sound = Some(sound),
                Err(e) => tracing::warn!(
                    x_display = session.display,
                    error = format!("{e:#}"),
                    "The session has no sound"
                ),
            }
        }
        for command in spec.commands {
            let child = session.spawn(command, spec, login.as_deref())?;
            session.children.push(child);
        }
        Ok(session)
    }

    fn spawn(
        &self,
        command: &str,
        spec: &XSessionSpec<'_>,
        login: Option<&[(String, String)]>,
    ) -> anyhow::Result<Child> {
        let mut c = match (spec.run_as, login) {
            (Some(account), Some(environment)) => {
                // As the account, with its supplementary groups (std's uid/gid would drop
                // them) and a login environment of its own, none of the server's.
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", account.uid))
                    .arg(format!("--regid={}", account.gid))
                    .args(["--init-groups", "--", "/bin/sh", "-c", command])
                    .env_clear()
                    .envs(environment.iter().map(|(k, v)| (k, v)))
                    .current_dir(if account.home.is_dir() {
                        account.home.as_path()
                    } else {
                        Path::new("/")
                    });
                c
            }
            _ => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(command);
                if let Some(home) = std::env::var_os("HOME").filter(|h| Path::new(h).is_dir()) {
                    c.current_dir(home);
                }
                c
            }
        };
        c.env("DISPLAY", &self.display)
            .envs(spec.account.map(|a| ("DESKPORT_ACCOUNT", a)))
            .envs(
                self.sound
                    .as_ref()
                    .map(|s| ("PULSE_SERVER", s.pulse_server())),
            )
            .stdin(Stdio::null())
            .stdout(append(spec.log)?)
            .stderr(append(spec.log)?)
            .process_group(0);
        c.spawn()
            .with_context(|| format!("start the session command {command:?}"))
    }

    /// The display name, e.g. `:12`, for `DISPLAY=`.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The X server it runs on (Xvnc can change its screen size, Xvfb cannot).
    pub fn x_server(&self) -> XServer {
        self.x_server
    }

    /// The session's sound, if it has any.
    pub fn sound(&self) -> Option<&SoundServer> {
        self.sound.as_ref()
    }

    /// Whose home the client's drives go into: the account's (this process's user's when
    /// the session runs as that), if it has a home directory.
    pub fn drives_home(&self) -> Option<&crate::drives::DrivesHome> {
        self.drives_home.as_ref()
    }

    /// Whether the session's first program (the session itself) has exited.
    pub fn logged_off(&mut self) -> bool {
        self.children
            .get_mut(1)
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the programs, then the sound and the PAM session, then the X server (see
    /// [`XSession`]).
    pub fn stop(&mut self) {
        for child in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // Each program leads its own process group: stop what it started too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        // The programs, then the sound and the PAM session, the X server (the first) last.
        for child in self.children.iter_mut().skip(1).rev() {
            reap(child);
        }
        self.sound = None;
        self.pam = None;
        if let Some(x_server) = self.children.first_mut() {
            reap(x_server);
        }
        self.children.clear();
        if let Some(uid) = self.runtime_uid.take() {
            release_runtime_dir(uid);
        }
    }
}

impl Drop for XSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The session of a virtual desktop unless `session_commands` says otherwise: what the
/// system offers, as a display manager starts it — Debian's `/etc/X11/Xsession` (the user's
/// `~/.xsession`, else the system's session manager: XFCE, MATE, LXQt… as installed; it also
/// starts the session's D-Bus) — else [`openbox_and_terminal`]. It ends when that exits.
pub fn default_commands() -> Vec<String> {
    vec![format!(
        "if [ -x /etc/X11/Xsession ]; then exec /etc/X11/Xsession; fi; {}",
        openbox_and_terminal()
    )]
}

/// A window manager (which paints the background) and a terminal: `deskport up`'s desktop,
/// and a session where the system offers none.
///
/// The window manager starts the terminal itself once it manages the screen (`--startup`): a
/// terminal started beside it maps its window while openbox takes over the root window, and
/// in about half the sessions that window stayed unmapped — a desktop without its terminal.
pub fn openbox_and_terminal() -> String {
    "exec openbox --startup \"sh -c 'xsetroot -solid rgb:1f/4e/79; exec xterm -geometry 100x30+40+40'\""
        .to_owned()
}

/// The environment a session of `account` starts with, as a login would give it: who it is
/// (`HOME`, `USER`, `LOGNAME`, `SHELL`), a standard `PATH`, the system's locale
/// (`/etc/default/locale`, else `C.UTF-8`), `XDG_RUNTIME_DIR` (`runtime`: `/run/user/UID`,
/// made 0700 for the account when missing and this process may; not when a PAM module
/// provides it), and the session's type. Nothing of the server's own environment.
pub fn login_environment(account: &UnixAccount, runtime: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), account.home.display().to_string()),
        ("USER".into(), account.name.clone()),
        ("LOGNAME".into(), account.name.clone()),
        ("SHELL".into(), account.shell.display().to_string()),
        (
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games".into(),
        ),
        ("XDG_SESSION_TYPE".into(), "x11".into()),
        ("XDG_SESSION_CLASS".into(), "user".into()),
    ];
    let locale = std::fs::read_to_string("/etc/default/locale").unwrap_or_default();
    let mut has_lang = false;
    for line in locale.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim_matches('"');
        if (key == "LANG" || key == "LANGUAGE" || key.starts_with("LC_")) && !value.is_empty() {
            has_lang |= key == "LANG";
            env.push((key.into(), value.into()));
        }
    }
    if !has_lang {
        env.push(("LANG".into(), "C.UTF-8".into()));
    }
    if runtime {
        match runtime_dir(account) {
            Ok(dir) => env.push(("XDG_RUNTIME_DIR".into(), dir.display().to_string())),
            Err(e) => tracing::warn!(account = account.name, error = %e, "No XDG_RUNTIME_DIR"),
        }
    }
    env
}

/// Opens the PAM session of `service` for `account` on `display` (`remote_host`: the client's
/// address, `PAM_RHOST`) through the helper process, unless the system has no such service
/// (then it says so and goes on without one: PAM's `other` service is pam_deny on many
/// systems, which would refuse every desktop).
fn open_pam(
    service: &str,
    account: &UnixAccount,
    x_display: &str,
    remote_host: Option<&str>,
) -> anyhow::Result<Option<deskport_pam::PamHelper>> {
    let installed = ["/etc/pam.d", "/usr/lib/pam.d"]
        .iter()
        .any(|dir| Path::new(dir).join(service).is_file());
    if !installed {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                service,
                "No PAM service of this name (/etc/pam.d): sessions open no PAM session (the deskport package installs /etc/pam.d/deskport)"
            );
        });
        return Ok(None);
    }
    // This very program (even once a package upgrade has replaced its file).
    let pam = deskport_pam::PamHelper::open(
        Path::new("/proc/self/exe"),
        "pam-session",
        service,
        &account.name,
        x_display,
        remote_host,
    )
    .with_context(|| {
        format!(
            "open the PAM session (service {service:?}) of {}",
            account.name
        )
    })?;
    tracing::info!(
        account = account.name,
        x_display,
        service,
        remote_host,
        "PAM session opened"
    );
    Ok(Some(pam))
}

/// Adds what the PAM modules set to a login environment: theirs where they set a variable,
/// except who the session is (`HOME`, `USER`, `LOGNAME`, `SHELL`), which stays the account's.
fn merge_environment(login: &mut Vec<(String, String)>, pam: &[(String, String)]) {
    for (key, value) in pam {
        if ["HOME", "USER", "LOGNAME", "SHELL"].contains(&key.as_str()) {
            continue;
        }
        match login.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => login.push((key.clone(), value.clone())),
        }
    }
}

/// The runtime directories deskport made, by account: how many sessions use each. The last
/// session to end removes the directory, as logind removes the ones it makes; one deskport
/// did not make is left alone.
static RUNTIME_DIRS: std::sync::Mutex<Vec<(u32, usize)>> = std::sync::Mutex::new(Vec::new());

/// The home of `account`, else of this process's user, if it is a directory.
fn drives_home(account: Option<&UnixAccount>) -> Option<crate::drives::DrivesHome> {
    let home = match account {
        Some(a) => crate::drives::DrivesHome {
            home: a.home.clone(),
            uid: a.uid,
            gid: a.gid,
        },
        None => {
            let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
            crate::drives::DrivesHome {
                home: user.dir,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }
        }
    };
    home.home.is_dir().then_some(home)
}

fn release_runtime_dir(uid: u32) {
    let mut made = RUNTIME_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = made.iter().position(|(u, _)| *u == uid) else {
        return;
    };
    made[i].1 -= 1;
    if made[i].1 == 0 {
        made.remove(i);
        let dir = PathBuf::from(format!("/run/user/{uid}"));
        // Not if something mounted its own there meanwhile (logind's tmpfs of another
        // session of the account): that one is not deskport's to empty.
        use std::os::unix::fs::MetadataExt as _;
        let mounted = match (std::fs::metadata(&dir), std::fs::metadata("/run/user")) {
            (Ok(d), Ok(parent)) => d.dev() != parent.dev(),
            _ => true,
        };
        if !mounted {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `/run/user/UID` of `account`, made 0700 and the account's when missing (as logind would).
fn runtime_dir(account: &UnixAccount) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let dir = PathBuf::from(format!("/run/user/{}", account.uid));
    let mut made = RUNTIME_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = made.iter_mut().find(|(u, _)| *u == account.uid) {
        entry.1 += 1;
    } else if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create("/run/user")
            .context("create /run/user")?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(account.uid)),
            Some(nix::unistd::Gid::from_raw(account.gid)),
        )
        .with_context(|| format!("give {} to {}", dir.display(), account.name))?;
        made.push((account.uid, 1));
    }
    drop(made);
    let meta = std::fs::metadata(&dir)?;
    anyhow::ensure!(
        meta.uid() == account.uid,
        "{} belongs to another user",
        dir.display()
    );
    Ok(dir)
}
