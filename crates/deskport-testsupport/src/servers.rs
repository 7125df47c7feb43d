//! Other RDP servers, started the way the tests and benchmarks run them: FreeRDP's shadow
//! server on a display, and xrdp 0.9 with Xvnc sessions.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, require_program, require_root, wait_until, Netns, ProcessGuard};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Waits until something accepts TCP connections on 127.0.0.1:`port` (inside `netns` if
/// given).
pub fn wait_listening(port: u16, netns: Option<&Netns>, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        let connect = || TcpStream::connect((LO, port)).ok().map(|_| ());
        match netns {
            Some(ns) => ns.run_in(connect),
            None => connect(),
        }
    });
}

/// A `Command` for `program`, inside `netns` if given.
pub fn command_in(netns: Option<&Netns>, program: &str) -> Command {
    match netns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    }
}

/// FreeRDP's shadow server (`freerdp-shadow-cli`) sharing X display `display` without
/// authentication, on 127.0.0.1:`port` (inside `netns` if given), its output in `dir`.
/// It sends nothing until the shared screen changes.
pub fn freerdp_shadow(dir: &Path, display: &str, port: u16, netns: Option<&Netns>) -> ProcessGuard {
    require_program("freerdp-shadow-cli");
    let process = ProcessGuard::spawn(
        "freerdp-shadow-cli",
        command_in(netns, "freerdp-shadow-cli")
            .args([&format!("/port:{port}"), "-auth"])
            .env("DISPLAY", display)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("shadow-{port}.log"))).expect("log"))
            .stderr(std::fs::File::create(dir.join(format!("shadow-{port}.err"))).expect("log")),
    )
    .expect("start freerdp-shadow-cli");
    wait_listening(port, netns, "the shadow server to listen");
    process
}

/// The password of [`XrdpServer`]'s account.
pub const XRDP_PASSWORD: &str = "Xrdp-test-7";

/// The display numbers sesman gives the Xvnc sessions (`X11DisplayOffset` and the ten after
/// it).
const XRDP_DISPLAYS: std::ops::RangeInclusive<u32> = 150..=160;

/// xrdp 0.9 with Xvnc sessions, run in the foreground: its own configuration in `dir/xrdp`
/// (loopback, a free port, TLS with a certificate made here), and a throwaway Unix account
/// it authenticates through PAM ([`XRDP_PASSWORD`]). A session runs `session_script` (a
/// shell script: the session's "window manager"). Stopped, with the session's processes and
/// the account, on drop.
#[derive(Debug)]
pub struct XrdpServer {
    port: u16,
    user: String,
    uid: u32,
    conf: PathBuf,
    xrdp: ProcessGuard,
    _sesman: ProcessGuard,
}

impl XrdpServer {
    /// Starts xrdp and sesman on loopback.
    pub fn start(dir: &Path, session_script: &str) -> Self {
        Self::start_in(dir, session_script, None)
    }

    /// Starts xrdp and sesman inside `netns` if given (else on the machine's loopback).
    pub fn start_in(dir: &Path, session_script: &str, netns: Option<&Netns>) -> Self {
        require_root();
        for program in ["xrdp", "xrdp-sesman", "Xvnc", "openssl", "useradd"] {
            require_program(program);
        }
        // xrdp finds sesman on the port /etc/xrdp/sesman.ini names (3350), whatever our file
        // says: it must be free.
        let sesman_port_taken = || {
            TcpStream::connect_timeout(&(LO, 3350).into(), Duration::from_secs(1)).is_ok()
                || TcpStream::connect_timeout(
                    &("::1".parse::<IpAddr>().expect("an address"), 3350).into(),
                    Duration::from_secs(1),
                )
                .is_ok()
        };
        let taken = match netns {
            Some(ns) => ns.run_in(sesman_port_taken),
            None => sesman_port_taken(),
        };
        assert!(
            !taken,
            "something (a system xrdp-sesman?) listens on port 3350, which the test's sesman needs"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let conf = dir.join("xrdp");
        std::fs::create_dir(&conf).expect("create the xrdp directory");
        // The session's programs run as the test account: they must reach the directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let user = format!("dpx{}", std::process::id());
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", &user])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {user}");
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        writeln!(
            chpasswd.stdin.take().expect("piped"),
            "{user}:{XRDP_PASSWORD}"
        )
        .expect("write to chpasswd");
        assert!(chpasswd.wait().expect("chpasswd").success());
        let uid = nix::unistd::User::from_name(&user)
            .expect("look up the account")
            .expect("the account just made")
            .uid
            .as_raw();
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=xrdp-test", "-keyout"])
            .arg(conf.join("key.pem"))
            .arg("-out")
            .arg(conf.join("cert.pem"))
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let startwm = conf.join("startwm.sh");
        std::fs::write(&startwm, session_script).expect("write startwm.sh");
        std::fs::set_permissions(&startwm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = match netns {
            Some(_) => 3389,
            None => free_port(LO),
        };
        let c = conf.display();
        let first_display = XRDP_DISPLAYS.start();
        // Displays left by an earlier run that was killed.
        sweep_stale_x_displays();
        std::fs::write(
            conf.join("xrdp.ini"),
            format!(
                "[Globals]\nini_version=1\nfork=true\nport=tcp://127.0.0.1:{port}\nsecurity_layer=negotiate\n\
                 crypt_level=high\ncertificate={c}/cert.pem\nkey_file={c}/key.pem\nssl_protocols=TLSv1.2, TLSv1.3\n\
                 autorun=Xvnc\nallow_channels=true\nbitmap_cache=true\nbitmap_compression=true\nbulk_compression=true\n\
                 max_bpp=32\nnew_cursors=true\nuse_fastpath=both\n\
                 [Logging]\nLogFile={c}/xrdp.log\nLogLevel=INFO\nEnableSyslog=false\nEnableConsole=false\n\
                 [Channels]\nrdpdr=false\nrdpsnd=false\ndrdynvc=false\ncliprdr=false\nrail=false\nxrdpvr=false\ntcutils=false\n\
                 [Xvnc]\nname=Xvnc\nlib=libvnc.so\nusername=ask\npassword=ask\nip=127.0.0.1\nport=-1\n"
            ),
        )
        .expect("write xrdp.ini");
        std::fs::write(
            conf.join("sesman.ini"),
            format!(
                "[Globals]\nListenAddress=127.0.0.1\nListenPort=3350\nEnableUserWindowManager=false\n\
                 UserWindowManager=startwm.sh\nDefaultWindowManager={c}/startwm.sh\nReconnectScript=reconnectwm.sh\n\
                 [Security]\nAllowRootLogin=false\nMaxLoginRetry=4\nTerminalServerUsers=tsusers\n\
                 TerminalServerAdmins=tsadmins\nAlwaysGroupCheck=false\n\
                 [Sessions]\nX11DisplayOffset={first_display}\nMaxSessions=10\nKillDisconnected=true\nDisconnectedTimeLimit=0\n\
                 IdleTimeLimit=0\nPolicy=Default\n\
                 [Logging]\nLogFile={c}/sesman.log\nLogLevel=INFO\nEnableSyslog=false\nEnableConsole=false\n\
                 [Xvnc]\nparam=Xvnc\nparam=-bs\nparam=-nolisten\nparam=tcp\nparam=-localhost\nparam=-dpi\nparam=96\n\
                 [Chansrv]\nFuseMountName=thinclient_drives\n[ChansrvLogging]\nLogLevel=INFO\nEnableSyslog=false\n"
            ),
        )
        .expect("write sesman.ini");
        let spawn = |name: &str, program: &str| {
            ProcessGuard::spawn(
                name,
                command_in(netns, program)
                    .arg("--nodaemon")
                    .arg("--config")
                    .arg(conf.join(format!("{name}.ini")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(conf.join(format!("{name}.err"))).expect("log")),
            )
            .unwrap_or_else(|e| panic!("start {program}: {e}"))
        };
        let sesman = spawn("sesman", "xrdp-sesman");
        let xrdp = spawn("xrdp", "xrdp");
        wait_listening(port, netns, "xrdp to listen");
        Self {
            port,
            user,
            uid,
            conf,
            xrdp,
            _sesman: sesman,
        }
    }

    /// The port xrdp listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The account's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// xrdp's configuration directory (`dir/xrdp`), where its logs are too.
    pub fn conf_dir(&self) -> &Path {
        &self.conf
    }

    /// xrdp's own process (it forks a child per connection into its process group).
    pub fn xrdp_pid(&self) -> u32 {
        self.xrdp.pid()
    }

    /// The account's X authority file (for clients of the session's Xvnc).
    pub fn xauthority(&self) -> PathBuf {
        PathBuf::from(format!("/home/{}/.Xauthority", self.user))
    }

    /// The session's Xvnc: its PID and display (`:N`), once it runs.
    pub fn session_x_server(&self) -> Option<(u32, String)> {
        self.account_processes().into_iter().find_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let program = Path::new(args.first()?).file_name()?.to_str()?.to_owned();
            if program != "Xvnc" {
                return None;
            }
            let display = args.iter().find(|a| a.starts_with(':'))?.clone();
            Some((pid as u32, display))
        })
    }

    /// The PIDs of the processes running as the test account.
    pub fn account_processes(&self) -> Vec<i32> {
        let uid = self.uid.to_string();
        processes_where(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let owner = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?;
            Some(owner == uid)
        })
        .into_iter()
        .map(|pid| pid as i32)
        .collect()
    }
}

/// Removes the lock files and sockets of the xrdp sessions' X displays whose server is gone
/// (a session killed before it could clean up; sesman would otherwise run out of displays).
fn sweep_stale_x_displays() {
    for n in XRDP_DISPLAYS {
        let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
        let Ok(text) = std::fs::read_to_string(&lock) else {
            continue;
        };
        let alive = text
            .trim()
            .parse::<i32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_file(&lock);
            let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
        }
    }
}

impl Drop for XrdpServer {
    fn drop(&mut self) {
        // The session (sesman's child, Xvnc, the terminal) runs as the test account, outside
        // our process groups: stop each of its processes by PID — asked first, so that Xvnc
        // removes its display's lock and socket, then killed — then remove the account.
        for pid in self.account_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !self.account_processes().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..2 {
            for pid in self.account_processes() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        sweep_stale_x_displays();
        let _ = Command::new("userdel")
            .args(["-r", "-f", &self.user])
            .stderr(Stdio::null())
            .status();
    }
}

/// User plus system CPU time of process `pid` (all its threads), in seconds; 0 when it is
/// gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime: fields 14 and 15 of proc(5), counted from the state field (3).
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / hz as f64
}

/// The PIDs of the processes in process group `pgid`.
pub fn process_group(pgid: u32) -> Vec<u32> {
    processes_where(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 2..];
        // pgrp: field 5, the third after the state.
        let group: u32 = after.split(' ').nth(2)?.parse().ok()?;
        Some(group == pgid)
    })
}

/// The PIDs for which `test` answers `Some(true)` (`None`: the process is gone).
fn processes_where(test: impl Fn(u32) -> Option<bool>) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| test(pid) == Some(true))
        .collect()
}
