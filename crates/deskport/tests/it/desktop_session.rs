//! The instance's own desktop (issue 18): with no `session_commands`, a virtual session runs
//! what the system offers — Debian's `/etc/X11/Xsession`, here running the account's
//! `~/.xsession`, which starts XFCE (xfce4-session, its panel and window manager from Debian's
//! packages) — as the account, with its groups, in a login environment of its own; logging off
//! from XFCE ends the session and disconnects the client.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use deskport_testsupport::{
    free_port, require_program, require_root, wait_until, ProcessGuard, Xvfb,
};

use crate::rdp::{add_account, xfreerdp_to, PASSWORD};
use crate::rdp_sessions::{session_display_in, wait_shown};
use crate::support::UnixUser;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The environment of process `pid`.
fn environ(pid: &str) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

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
    let _server = ProcessGuard::spawn(
        "deskport rdp-server",
        Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args([
                "rdp-server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&data)
            .env("DESKPORT_CONFIG", "/dev/null")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the RDP server to listen", || {
        TcpStream::connect((LO, port)).ok().map(|_| ())
    });

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
    let pgrep = Command::new("pgrep")
        .args(["-u", &user.name, "-x", "xfce4-session"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pgrep.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no xfce4-session of {}", user.name))
        .to_owned();
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
