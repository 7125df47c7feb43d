//! Starting X desktops: an X server on a display number it picks itself, and a session's
//! programs on it, as one [`XSession`] that stops as a whole. Virtual sessions, `deskport up`
//! and the test fixtures all start their desktops here.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

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

/// Starts an X server with one `size` screen at 24-bit depth, its errors appended to `log`;
/// it picks a free display number itself (`-displayfd`: no polling of sockets, no collisions)
/// and listens on no TCP port (Xvnc: no VNC port either). `own_group`: in a process group of
/// its own (so that a session can be stopped as a whole). Returns the process and the display
/// name.
pub fn start_x_server(
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    start_x_server_with(Command::new(kind.program().0), kind, size, log, own_group)
}

/// [`start_x_server`] through `command`: the X server's program, or a command that runs it
/// (e.g. `ip netns exec NAME Xvfb`); the server's arguments are appended.
pub fn start_x_server_with(
    mut command: Command,
    kind: XServer,
    size: (u16, u16),
    log: &Path,
    own_group: bool,
) -> anyhow::Result<(Child, String)> {
    let stderr = append(log)?;
    let (program, package) = kind.program();
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

fn append(log: &Path) -> anyhow::Result<std::fs::File> {
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
}

/// An X server and the programs of a session on it. Stopped on drop: every program's process
/// group first (SIGTERM, then SIGKILL after 2 s), the X server last.
#[derive(Debug)]
pub struct XSession {
    display: String,
    x_server: XServer,
    /// The X server first, then the session's programs in order.
    children: Vec<Child>,
}

impl XSession {
    pub fn start(spec: &XSessionSpec<'_>) -> anyhow::Result<Self> {
        let x_server = spec.x_server.resolve();
        let (server, display) = start_x_server(x_server, spec.size, spec.log, true)?;
        let mut session = Self {
            display,
            x_server,
            children: vec![server],
        };
        // The programs must be able to use the display: with -displayfd and no -auth, the X
        // server accepts local clients.
        for command in spec.commands {
            let child = session.spawn(command, spec)?;
            session.children.push(child);
        }
        Ok(session)
    }

    fn spawn(&self, command: &str, spec: &XSessionSpec<'_>) -> anyhow::Result<Child> {
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(command)
            .env("DISPLAY", &self.display)
            .envs(spec.account.map(|a| ("DESKPORT_ACCOUNT", a)))
            .stdin(Stdio::null())
            .stdout(append(spec.log)?)
            .stderr(append(spec.log)?)
            .process_group(0);
        match spec.run_as {
            Some(account) => {
                c.uid(account.uid)
                    .gid(account.gid)
                    .env("HOME", &account.home)
                    .env("USER", &account.name)
                    .env("LOGNAME", &account.name)
                    .env("SHELL", &account.shell)
                    .current_dir(if account.home.is_dir() {
                        account.home.as_path()
                    } else {
                        Path::new("/")
                    });
            }
            None => {
                if let Some(home) = std::env::var_os("HOME").filter(|h| Path::new(h).is_dir()) {
                    c.current_dir(home);
                }
            }
        }
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

    /// Whether the session's first program (the session itself) has exited.
    pub fn logged_off(&mut self) -> bool {
        self.children
            .get_mut(1)
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the programs and then the X server (see [`XSession`]).
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
        for child in self.children.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for XSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A window manager (which paints the background) and a terminal: the session of a virtual
/// desktop unless `session_commands` says otherwise; it ends when the window manager exits.
pub fn default_commands() -> Vec<String> {
    vec![
        "exec openbox --startup \"xsetroot -solid '#1f4e79'\"".to_owned(),
        "exec xterm -geometry 100x30+40+40".to_owned(),
    ]
}
