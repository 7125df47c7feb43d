//! The instance's own desktop (issue 18): with no `session_commands`, a virtual session runs
//! what the system offers — Debian's `/etc/X11/Xsession`, here running the account's
//! `~/.xsession`, which starts XFCE (xfce4-session, its panel and window manager from Debian's
//! packages) — as the account, with its groups, in a login environment of its own; logging off
//! from XFCE ends the session and disconnects the client.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deskport_testsupport::{free_port, require_program, require_root, wait_until, Xvfb};

use crate::rdp::{add_account, rdp_server, xfreerdp_to, PASSWORD};
use crate::rdp_sessions::{session_display_in, wait_shown};
use crate::support::{environ, processes_of, UnixUser};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn the_default_session_is_the_systems_desktop_in_a_login_environment() {
    require_root();
    for program in [
        "xfce4-session",
        "xfce4-panel",
        "xfwm4",
        "dbus-launch",
        "xdotool",
        "setpriv",
    ] {
        require_program(program);
    }
    let dir = deskport_testsupport::data_dir();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = UnixUser::create_in_groups(dir.path(), &["audio"]);
    user.write_home(".xsession", "exec xfce4-session\n");

    // The RDP server with no session settings: the default session.
    let data = dir.path().join("rdp");
    add_account(&data, &user.name, PASSWORD);
    let port = free_port(LO);
    let log = dir.path().join("rdp-server.log");
    let _server = rdp_server(&data, Path::new("/dev/null"), port, &[], &log);
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let client = Xvfb::start(1280, 1024);
    let mut xfreerdp = xfreerdp_to(
        &client,
        &format!("127.0.0.1:{port}"),
        dir.path(),
        &user.name,
        PASSWORD,
        &["/sec:nla", "/size:1024x768"],
    );
    let display = wait_until(Duration::from_secs(30), "the session to start", || {
        session_display_in(&server_log(), &user.name)
    });

    // XFCE's panel is on the session's screen — a window of class xfce4-panel, mapped, and
    // drawn: its strip along the top edge is no longer the empty screen's black — and the
    // client shows that screen.
    let panel = || {
        let found = Command::new("xdotool")
            .args(["search", "--onlyvisible", "--class", "xfce4-panel"])
            .env("DISPLAY", &display)
            .output()
            .ok()?;
        if !found.status.success() || found.stdout.is_empty() {
            return None;
        }
        let shot = deskport_testsupport::screenshot(&display).ok()?;
        let drawn = (0..shot.width())
            .flat_map(|x| (0..20).map(move |y| (x, y)))
            .filter(|&(x, y)| shot.get_pixel(x, y).0 != [0, 0, 0])
            .count();
        (drawn > shot.width() as usize * 10).then_some(shot)
    };
    let shot = wait_until(Duration::from_secs(60), "XFCE's panel on the screen", panel);
    let artifacts = deskport_testsupport::artifact_dir("desktop-session");
    deskport_testsupport::image_util::save_png(&shot, &artifacts.join("xfce-server.png"));
    wait_shown(&client, &display, "xfce-session");

    // The session's programs: the account, its groups, a login environment.
    let pid = processes_of(&user.name, Some("xfce4-session"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no xfce4-session of {}", user.name));
    let env = environ(&pid);
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let uid = nix::unistd::User::from_name(&user.name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_eq!(get("USER"), Some(user.name.as_str()));
    assert_eq!(get("HOME"), Some(&*user.home.display().to_string()));
    assert_eq!(get("DISPLAY"), Some(display.as_str()));
    let runtime = format!("/run/user/{uid}");
    assert_eq!(get("XDG_RUNTIME_DIR"), Some(runtime.as_str()));
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&runtime).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));
    }
    assert!(get("LANG").is_some(), "no locale: {env:?}");
    let bus = get("DBUS_SESSION_BUS_ADDRESS")
        .unwrap_or_else(|| panic!("no session bus: {env:?}"))
        .to_owned();
    for leaked in ["RUST_LOG", "DESKPORT_CONFIG", "CARGO_MANIFEST_DIR"] {
        assert!(
            get(leaked).is_none(),
            "the server's {leaked} leaked into the session"
        );
    }
    let audio = nix::unistd::Group::from_name("audio").unwrap().unwrap().gid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = status
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .unwrap_or_default();
    assert!(
        groups.split_whitespace().any(|g| g == audio.to_string()),
        "the session lacks the account's group audio: {groups}"
    );

    // Logging off from XFCE ends the session and disconnects the client.
    let logout = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            "--regid=nogroup",
            "--init-groups",
        ])
        .args(["xfce4-session-logout", "--logout", "--fast"])
        .env("DISPLAY", &display)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus)
        .env("HOME", &user.home)
        .output()
        .unwrap();
    assert!(
        logout.status.success(),
        "xfce4-session-logout: {}",
        String::from_utf8_lossy(&logout.stderr)
    );
    wait_until(Duration::from_secs(30), "the session to end", || {
        server_log()
            .lines()
            .any(|l| l.contains("Session ended") && l.contains("logged off"))
            .then_some(())
    });
    wait_until(
        Duration::from_secs(20),
        "the client to be disconnected",
        || xfreerdp.process.try_wait().map(|_| ()),
    );
}

/// A PAM service file of the test's in `/etc/pam.d` (removed on drop).
struct PamService {
    name: String,
}

impl PamService {
    fn install(name: String, text: &str) -> Self {
        std::fs::write(format!("/etc/pam.d/{name}"), text).unwrap();
        Self { name }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/etc/pam.d/{}", self.name));
    }
}

/// A PAM session around each virtual desktop (issue 18): the account's checks (a refusing
/// account phase gets no desktop), the session modules run when the session starts (with the
/// display as the TTY) and again when it ends, and the environment they set reaches the
/// session's programs. Real libpam with real modules (pam_exec, pam_env, pam_permit,
/// pam_deny) through service files of the test's.
#[test]
fn a_pam_session_opens_with_the_desktop_and_closes_with_it() {
    require_root();
    require_program("xterm");
    if !Path::new("/etc/pam.d").is_dir() {
        panic!("no /etc/pam.d: PAM is not installed");
    }
    let dir = deskport_testsupport::data_dir();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = UnixUser::create(dir.path());
    let refused = UnixUser::create(dir.path());

    // pam_exec logs each session phase; pam_env sets a variable.
    let log = dir.path().join("pam.log");
    let hook = dir.path().join("pam-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$PAM_TYPE $PAM_SERVICE $PAM_USER $PAM_TTY from $PAM_RHOST by $PPID\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env_conf = dir.path().join("pam_env.conf");
    std::fs::write(&env_conf, "DESKPORT_PAM_TEST DEFAULT=set-by-pam\n").unwrap();
    let allow = format!("dpt{}pam", std::process::id());
    let _allow = PamService::install(
        allow.clone(),
        &format!(
            "account required pam_permit.so\nauth required pam_permit.so\n\
             session required pam_exec.so {}\n\
             session required pam_env.so readenv=1 user_readenv=0 conffile={} envfile=/dev/null\n",
            hook.display(),
            env_conf.display()
        ),
    );
    let deny = format!("dpt{}pamdeny", std::process::id());
    let _deny = PamService::install(
        deny.clone(),
        "account required pam_deny.so\nsession required pam_permit.so\n",
    );

    let start = |service: &str, name: &str| {
        let data = dir.path().join(format!("rdp-{name}"));
        add_account(&data, user.name.as_str(), PASSWORD);
        add_account(&data, refused.name.as_str(), PASSWORD);
        let config = dir.path().join(format!("config-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[rdp_server]\nsession_x_server = \"xvfb\"\nsound = false\n\
                 session_pam_service = \"{service}\"\n\
                 session_commands = [\"exec xterm -geometry 80x20+0+0\"]\n"
            ),
        )
        .unwrap();
        let port = free_port(LO);
        let log = dir.path().join(format!("rdp-server-{name}.log"));
        let server = rdp_server(&data, &config, port, &[], &log);
        (server, port, log)
    };
    let client = Xvfb::start(1024, 768);

    // The allowing service: the session opens, its programs get the modules' environment.
    let (server, port, server_log) = start(&allow, "allow");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut xfreerdp = xfreerdp_to(
        &client,
        &format!("127.0.0.1:{port}"),
        dir.path(),
        &user.name,
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    let display = wait_until(Duration::from_secs(30), "the session to start", || {
        session_display_in(&read(&server_log), &user.name)
    });
    // The client's address is PAM_RHOST.
    let opened = format!(
        "open_session {allow} {} {display} from 127.0.0.1",
        user.name
    );
    wait_until(Duration::from_secs(10), "pam_open_session", || {
        read(&log).contains(&opened).then_some(())
    });
    // Opened by a helper process, not by the server (pam_systemd would move the process that
    // opens a session into the session's cgroup).
    let by = read(&log)
        .lines()
        .find(|l| l.starts_with(&opened))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .unwrap();
    assert_ne!(by, server.pid(), "the server itself opened the PAM session");
    let helper = std::fs::read_to_string(format!("/proc/{by}/cmdline")).unwrap_or_default();
    assert!(helper.contains("pam-session"), "opened by {helper:?}");
    let xterm = wait_until(Duration::from_secs(10), "the session's terminal", || {
        processes_of(&user.name, Some("xterm")).into_iter().next()
    });
    let env = environ(&xterm);
    assert!(
        env.iter()
            .any(|(k, v)| k == "DESKPORT_PAM_TEST" && v == "set-by-pam"),
        "the PAM environment did not reach the session: {env:?}"
    );
    assert!(!read(&log).contains("close_session"), "{}", read(&log));

    // Logging off (the session's program exits) closes the PAM session.
    let _ = Command::new("kill").arg(&xterm).status();
    let closed = format!(
        "close_session {allow} {} {display} from 127.0.0.1",
        user.name
    );
    wait_until(Duration::from_secs(20), "pam_close_session", || {
        read(&log).contains(&closed).then_some(())
    });
    wait_until(
        Duration::from_secs(20),
        "the client to be disconnected",
        || xfreerdp.process.try_wait().map(|_| ()),
    );

    // The refusing service: no desktop, the client is disconnected, the reason is logged.
    let (_server, port, server_log) = start(&deny, "deny");
    let mut xfreerdp = xfreerdp_to(
        &client,
        &format!("127.0.0.1:{port}"),
        dir.path(),
        &refused.name,
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    wait_until(Duration::from_secs(30), "the refusal", || {
        let log = read(&server_log);
        (log.contains("open the PAM session") && log.contains("pam_acct_mgmt")).then_some(())
    });
    wait_until(
        Duration::from_secs(20),
        "the refused client to be disconnected",
        || xfreerdp.process.try_wait().map(|_| ()),
    );
    assert!(
        processes_of(&refused.name, None).is_empty(),
        "the refused account runs programs"
    );
}
