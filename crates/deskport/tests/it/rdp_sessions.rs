//! Virtual desktops (`deskport rdp-server` without `--display`), with real clients under Xvfb:
//! each account gets its own desktop running as a Unix account; typed keys reach the session's
//! application as the right characters; a reconnection shows the same desktop; a second client
//! takes the session over; a session nobody is connected to ends after its timeout; logging off
//! ends it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deskport_testsupport::{
    free_port, image_util, require_program, wait_until, ProcessGuard, Xvfb,
};
use image::RgbImage;

use crate::rdp::{add_account, xfreerdp_to, PASSWORD};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A server of virtual desktops; the sessions run `cat` in an xterm, writing what is typed to
/// `typed-ACCOUNT.txt` in `shared` (ACCOUNT: the RDP account, `DESKPORT_ACCOUNT` in the
/// session; every session runs as the Unix user `nobody`).
pub struct Server {
    pub port: u16,
    log: PathBuf,
    shared: PathBuf,
    _process: ProcessGuard,
}

impl Server {
    fn start(dir: &Path, timeout_secs: u64) -> Self {
        Self::start_with(dir, timeout_secs, free_port(LO), &[], &[])
    }

    /// A server on `port` with `extra` flags (e.g. `--manager`), whose sessions also run
    /// `more` commands after the terminal (`SHARED` in them names the shared directory).
    pub fn start_with(
        dir: &Path,
        timeout_secs: u64,
        port: u16,
        extra: &[&str],
        more: &[&str],
    ) -> Self {
        require_program("Xvfb");
        require_program("xterm");
        let data = dir.join("rdp");
        for user in ["alice", "bob"] {
            add_account(&data, user, PASSWORD);
        }
        // The sessions run as `nobody` (tests run as root): it may write here only.
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[rdp_server]\nsession_unix_user = \"nobody\"\nsession_timeout_secs = {timeout_secs}\n\
                 session_commands = [\"LC_ALL=C.UTF-8 exec xterm -u8 -geometry 80x20+0+0 -e /bin/sh -c 'exec cat > {}/typed-$DESKPORT_ACCOUNT.txt'\"{}]\n",
                shared.display(),
                more.iter()
                    .map(|c| format!(", {:?}", c.replace("SHARED", &shared.display().to_string())))
                    .collect::<String>()
            ),
        )
        .unwrap();
        let log = dir.join("rdp-server.log");
        let process = crate::rdp::rdp_server(&data, &config, port, extra, &log);
        Self {
            port,
            log,
            shared,
            _process: process,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The X display of `account`'s newest session, from the log.
    pub fn display_of(&self, account: &str) -> String {
        wait_until(Duration::from_secs(20), "the session to start", || {
            session_display_in(&self.log(), account)
        })
    }

    pub fn typed(&self, account: &str) -> String {
        std::fs::read_to_string(self.shared.join(format!("typed-{account}.txt")))
            .unwrap_or_default()
    }
}

/// The X display of `account`'s newest session in an RDP server's `log`, if it has one.
pub(crate) fn session_display_in(log: &str, account: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| {
            l.contains("Session started on a new desktop")
                && l.contains(&format!("account=\"{account}\""))
        })
        .and_then(|l| l.split("x_display=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
}

/// Where the session's screen shows on the client's screen, if it all does.
fn shows(shot: &RgbImage, desktop: &RgbImage) -> bool {
    // The terminal's top-left corner: the most distinctive part of the session's screen.
    let needle = image::imageops::crop_imm(desktop, 0, 0, 200, 60).to_image();
    let Some((x, y)) = image_util::find(shot, &needle, 8) else {
        return false;
    };
    x + desktop.width() <= shot.width()
        && y + desktop.height() <= shot.height()
        && image_util::diff_fraction(shot, (x, y), desktop, (0, 0), desktop.dimensions(), 8) < 0.01
}

pub(crate) fn wait_shown(client: &Xvfb, display: &str, artifact: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("the session on the client ({artifact})"),
        || {
            let desktop = deskport_testsupport::screenshot(display).ok()?;
            let shot = client.screenshot();
            shows(&shot, &desktop).then(|| {
                image_util::save_png(
                    &shot,
                    &deskport_testsupport::artifact_dir("rdp-sessions")
                        .join(format!("{artifact}.png")),
                )
            })
        },
    );
}

/// Whether the client display shows the session's pointer: same size and opaque pixels, and
/// the same hotspot (RDP keeps it inside the image).
fn same_pointer(
    session: &deskport_testsupport::CursorImage,
    shown: &deskport_testsupport::CursorImage,
) -> bool {
    let ((w, h), (x, y), pixels) = session;
    let shape = |p: &[u32]| p.iter().map(|v| v >> 24 >= 128).collect::<Vec<_>>();
    let hotspot = ((*x).min(w - 1), (*y).min(h - 1));
    (*w, *h) == shown.0 && hotspot == shown.1 && shape(pixels) == shape(&shown.2)
}

fn x_socket(display: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/.X11-unix/X{}",
        display.trim_start_matches(':')
    ))
}

#[test]
fn each_account_gets_a_desktop_that_survives_reconnection_and_takes_keys() {
    require_program("xdotool");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1024, 768);
    let target = server.target();
    let logs = dir.path();

    // The client display's own pointer, before any RDP client runs.
    let own_pointer = deskport_testsupport::cursor_image(client.display()).unwrap();
    // alice's first logon starts her desktop at the client's size.
    let mut first = xfreerdp_to(
        &client,
        &target,
        logs,
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    let alice = server.display_of("alice");
    assert_eq!(
        deskport_testsupport::screenshot(&alice)
            .unwrap()
            .dimensions(),
        (800, 600)
    );
    wait_shown(&client, &alice, "alice-first");
    // Its programs run as the Unix account.
    let ps = Command::new("ps")
        .args(["-o", "user=", "-C", "xterm"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("nobody"),
        "the session runs as nobody"
    );

    // Keys typed on the client reach the session's application as characters.
    let xdotool = |args: &[&str]| {
        assert!(
            client
                .command("xdotool")
                .args(args)
                .status()
                .unwrap()
                .success(),
            "xdotool {args:?}"
        );
    };
    xdotool(&["mousemove", "100", "100", "click", "1"]);
    // The pointer is over the terminal: the client shows the terminal's pointer (an I-beam),
    // the same shape the session's X server shows (checked before typing: xterm hides the
    // pointer while one types).
    wait_until(
        Duration::from_secs(10),
        "the session's pointer on the client",
        || {
            let (size, hot, pixels) = deskport_testsupport::cursor_image(&alice).ok()?;
            // Until the click arrives the session shows its root window's pointer.
            if (size, hot, &pixels) == (own_pointer.0, own_pointer.1, &own_pointer.2) {
                return None;
            }
            let shown = deskport_testsupport::cursor_image(client.display()).ok()?;
            same_pointer(&(size, hot, pixels), &shown).then_some(())
        },
    );
    let session_pointer = deskport_testsupport::cursor_image(&alice).unwrap();
    eprintln!(
        "the session's pointer: {:?}, hotspot {:?}",
        session_pointer.0, session_pointer.1
    );
    assert_ne!(
        session_pointer, own_pointer,
        "the session's pointer differs from the client display's own"
    );
    xdotool(&["type", "--delay", "30", "Hello 123 !@#"]);
    xdotool(&["key", "Up", "Return"]);
    let typed = wait_until(
        Duration::from_secs(10),
        "the typed line in the session",
        || {
            let t = server.typed("alice");
            t.contains('\n').then_some(t)
        },
    );
    assert!(typed.starts_with("Hello 123 !@#"), "{typed:?}");
    assert!(
        typed.contains("\u{1b}[A") || typed.contains("\u{1b}OA"),
        "the Up arrow: {typed:?}"
    );

    // A second client takes the session over: the first is disconnected.
    let shot = dir.path().join("takeover.png");
    let out = Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args([
            "connect",
            &target,
            "-u",
            "alice",
            "-p",
            PASSWORD,
            "-g",
            "800x600",
            "--screenshot",
        ])
        .arg(&shot)
        .arg("--known-hosts")
        .arg(dir.path().join("known_hosts"))
        .env("DESKPORT_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(10),
        "the first client to be disconnected",
        || first.process.try_wait().map(|_| ()),
    );
    let desktop = deskport_testsupport::screenshot(&alice).unwrap();
    let png = image::open(&shot).unwrap().to_rgb8();
    assert!(
        image_util::diff_fraction(&png, (0, 0), &desktop, (0, 0), desktop.dimensions(), 8) < 0.01,
        "the second client sees the same desktop"
    );
    assert!(
        server.log().contains("Reattaching to the session"),
        "{}",
        server.log()
    );

    // Reconnecting shows the same desktop (same display, same terminal with its state).
    let again = xfreerdp_to(
        &client,
        &target,
        logs,
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    wait_shown(&client, &alice, "alice-reconnected");
    assert_eq!(
        server
            .log()
            .matches("Session started on a new desktop")
            .count(),
        1
    );
    drop(again);

    // deskport's own window: characters no PC key has (typed here by xdotool through a
    // remapped keycode) travel as RDP Unicode events and arrive as the same characters.
    let _window = deskport_window(&client, &target, dir.path());
    wait_shown(&client, &alice, "alice-deskport-window");
    xdotool(&["mousemove", "100", "100", "click", "1"]);
    xdotool(&["type", "--delay", "50", "é€ß😀 x"]);
    xdotool(&["key", "Return"]);
    let typed = wait_until(
        Duration::from_secs(10),
        "the Unicode line in the session",
        || {
            let t = server.typed("alice");
            (t.lines().count() >= 2).then_some(t)
        },
    );
    assert_eq!(typed.lines().nth(1), Some("é€ß😀 x"), "{typed:?}");

    // bob gets a desktop of his own.
    let bob_client = xfreerdp_to(
        &client,
        &target,
        logs,
        "bob",
        PASSWORD,
        &["/sec:nla", "/size:640x480"],
    );
    let bob = server.display_of("bob");
    assert_ne!(bob, alice);
    assert_eq!(
        deskport_testsupport::screenshot(&bob).unwrap().dimensions(),
        (640, 480)
    );
    drop(bob_client);
}

/// A session's X server admits the session's Unix user (`nobody` here) and the server's own
/// (root), and no other local account: another user's programs can neither read the screen
/// nor type into it.
#[test]
fn a_sessions_display_admits_its_user_and_no_other_account() {
    require_program("setpriv");
    require_program("xdpyinfo");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1024, 768);
    let args = ["/sec:nla", "/size:800x600"];
    let _x = xfreerdp_to(
        &client,
        &server.target(),
        dir.path(),
        "alice",
        PASSWORD,
        &args,
    );
    let alice = server.display_of("alice");
    wait_shown(&client, &alice, "alice-access");
    let xdpyinfo_as = |user: &str| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                "--regid=nogroup",
                "--clear-groups",
            ])
            .args(["xdpyinfo", "-display", &alice])
            .env_remove("XAUTHORITY")
            .output()
            .unwrap()
    };
    let own = xdpyinfo_as("nobody");
    assert!(
        own.status.success(),
        "the session's user is refused: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let other = xdpyinfo_as("daemon");
    assert!(
        !other.status.success(),
        "another account reached the session's display"
    );
    let said = String::from_utf8_lossy(&other.stderr);
    assert!(said.contains("unable to open display"), "{said}");
    // The server (root) still captures it: the client shows the session (above), and this
    // test's own screenshots, as root, work.
    assert!(deskport_testsupport::screenshot(&alice).is_ok());
}

/// The session takes the client's keyboard layout: xfreerdp announcing a German layout
/// (`/kbd:0x407`) sends the keys at the positions of Y, Z and [ of the client's US keyboard,
/// and the session's program gets the German characters of those positions: z, y and ü. The
/// same session reattached by a client with a US layout types y again.
#[test]
fn the_session_takes_the_clients_keyboard_layout() {
    require_program("xdotool");
    require_program("setxkbmap");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1024, 768);
    let type_line = |extra: &str, keys: &[&str], artifact: &str| {
        let args = ["/sec:nla", "/size:800x600", extra];
        let x = xfreerdp_to(
            &client,
            &server.target(),
            dir.path(),
            "alice",
            PASSWORD,
            &args,
        );
        let alice = server.display_of("alice");
        wait_shown(&client, &alice, artifact);
        let before = server.typed("alice").lines().count();
        for args in [&["mousemove", "100", "100", "click", "1"][..], keys] {
            let ok = client.command("xdotool").args(args).status().unwrap();
            assert!(ok.success(), "xdotool {args:?}");
        }
        let line = wait_until(Duration::from_secs(10), "the typed line", || {
            server.typed("alice").lines().nth(before).map(str::to_owned)
        });
        drop(x);
        line
    };
    let keys = ["key", "--delay", "40", "y", "z", "bracketleft", "Return"];
    let german = type_line("/kbd:0x407", &keys, "keyboard-de");
    assert_eq!(german, "zyü", "{}", server.log());
    assert!(server.log().contains("Keyboard layout set"));
    let us = type_line("/kbd:0x409", &keys, "keyboard-us");
    assert_eq!(us, "yz[", "{}", server.log());
}

#[test]
fn sessions_end_when_left_alone_or_logged_off() {
    require_program("xdotool");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 2);
    let client = Xvfb::start(1024, 768);
    let target = server.target();

    // Left alone: ended after the timeout, its X server gone.
    let first = xfreerdp_to(
        &client,
        &target,
        dir.path(),
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    let alice = server.display_of("alice");
    wait_shown(&client, &alice, "before-timeout");
    drop(first);
    let left = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the disconnected session to end",
        || {
            server
                .log()
                .contains("reason=\"disconnected too long\"")
                .then_some(())
        },
    );
    eprintln!(
        "session ended {:?} after the client left (timeout 2 s)",
        left.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        "the session's X server to exit",
        || (!x_socket(&alice).exists()).then_some(()),
    );

    // Logging off (the session's program exits: Ctrl-D ends `cat`, then the terminal).
    let mut second = xfreerdp_to(
        &client,
        &target,
        dir.path(),
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600"],
    );
    let fresh = wait_until(Duration::from_secs(20), "a new session", || {
        (server
            .log()
            .matches("Session started on a new desktop")
            .count()
            == 2)
            .then(|| server.display_of("alice"))
    });
    wait_shown(&client, &fresh, "new-session");
    assert!(client
        .command("xdotool")
        .args(["mousemove", "100", "100", "click", "1", "key", "ctrl+d"])
        .status()
        .unwrap()
        .success());
    wait_until(
        Duration::from_secs(20),
        "the logged-off session to end",
        || server.log().contains("reason=\"logged off\"").then_some(()),
    );
    wait_until(
        Duration::from_secs(10),
        "the client to be disconnected",
        || second.process.try_wait().map(|_| ()),
    );
}

/// `xclip` putting `text` on the CLIPBOARD selection of `display` (it serves it until the
/// guard drops or another program takes the selection).
pub fn copy_on(display: &str, text: &str) -> ProcessGuard {
    use std::io::Write as _;
    let mut process = ProcessGuard::spawn(
        "xclip",
        Command::new("xclip")
            .args(["-selection", "clipboard", "-i", "-quiet"])
            .env("DISPLAY", display)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut stdin = process.child_mut().stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    process
}

/// What pasting from CLIPBOARD on `display` gives, if anything.
pub fn paste_on(display: &str) -> Option<String> {
    let out = Command::new("xclip")
        .args(["-selection", "clipboard", "-o"])
        .env("DISPLAY", display)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn clipboard_text_crosses_both_ways() {
    require_program("xclip");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1024, 768);
    let target = server.target();
    let _session = xfreerdp_to(
        &client,
        &target,
        dir.path(),
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600", "+clipboard"],
    );
    let alice = server.display_of("alice");
    wait_shown(&client, &alice, "clipboard");

    texts_cross(&client, &alice);
}

/// Text copied on the client display can be pasted in the session, and the other way round.
fn texts_cross(client: &Xvfb, session: &str) {
    // Copied on the client, pasted in the session.
    let from_client = "copied on the client: grüße ✓";
    let _client_copy = copy_on(client.display(), from_client);
    wait_until(
        Duration::from_secs(15),
        "the client's text in the session",
        || (paste_on(session).as_deref() == Some(from_client)).then_some(()),
    );

    // Copied in the session, pasted on the client.
    let from_session = "copied in the session: 日本語 and €";
    let _session_copy = copy_on(session, from_session);
    wait_until(
        Duration::from_secs(15),
        "the session's text on the client",
        || (paste_on(client.display()).as_deref() == Some(from_session)).then_some(()),
    );
}

#[test]
fn clipboard_text_crosses_both_ways_with_deskport_connect() {
    require_program("xclip");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1024, 768);
    let target = server.target();
    let _window = deskport_window(&client, &target, dir.path());
    let alice = server.display_of("alice");
    wait_shown(&client, &alice, "clipboard-deskport");
    texts_cross(&client, &alice);
}

/// `deskport connect` as alice in a window on `client` (log in `dir`).
fn deskport_window(client: &Xvfb, target: &str, dir: &Path) -> ProcessGuard {
    ProcessGuard::spawn(
        "deskport connect",
        client
            .command(env!("CARGO_BIN_EXE_deskport"))
            .args([
                "connect", target, "-u", "alice", "-p", PASSWORD, "-g", "800x600",
            ])
            .arg("--known-hosts")
            .arg(dir.join("known_hosts"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("window.log")).unwrap()),
    )
    .unwrap()
}

/// The size of `display`'s screen.
pub fn screen_size(display: &str) -> Option<(u32, u32)> {
    deskport_testsupport::screenshot(display)
        .ok()
        .map(|s| s.dimensions())
}

/// The client's window changes size: the client asks for the new size over display control,
/// the session's X server (Xvnc) takes it, and the client shows the whole session at it
/// (classic updates: a Deactivation-Reactivation Sequence announces each size).
#[test]
fn the_session_screen_follows_xfreerdps_window() {
    // (Classic: xfreerdp 2.11 asks for the graphics pipeline unless told `/network:lan`.)
    let log = xfreerdp_window_resized("/network:lan", "xfreerdp");
    assert!(log.contains("Reactivated at the new screen size"), "{log}");
}

/// The same with xfreerdp on the graphics pipeline (`/gfx`): the session stays on it, each
/// new size is a graphics reset with a new surface (no reactivation), and xfreerdp shows
/// the session pixel for pixel at every size.
#[test]
fn the_session_screen_follows_xfreerdps_window_on_the_graphics_pipeline() {
    let log = xfreerdp_window_resized("/gfx", "xfreerdp-gfx");
    assert_eq!(
        log.matches("Graphics reset to the new screen size").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("Reactivated"), "{log}");
    assert!(!log.contains("Back to the classic"), "{log}");
}

/// xfreerdp with `/dynamic-resolution` and `extra` follows its window (artifacts named after
/// `name`); the server's log.
fn xfreerdp_window_resized(extra: &str, name: &str) -> String {
    require_program("Xvnc");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1280, 1024);
    let _session = xfreerdp_to(
        &client,
        &server.target(),
        dir.path(),
        "alice",
        PASSWORD,
        &["/sec:nla", "/size:800x600", "/dynamic-resolution", extra],
    );
    screen_follows_window(&server, &client, "xfreerdp", name);
    server.log()
}

/// The same with `deskport connect`'s window (on the graphics pipeline, its default).
#[test]
fn the_session_screen_follows_deskport_connects_window() {
    require_program("Xvnc");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    let client = Xvfb::start(1280, 1024);
    let _window = deskport_window(&client, &server.target(), dir.path());
    screen_follows_window(&server, &client, "deskport", "deskport");
    let log = server.log();
    assert!(
        log.contains("Graphics reset to the new screen size"),
        "{log}"
    );
}

/// Alice's session (800x600) shows in the window of class `class`, then follows the window
/// to two other sizes, each shown exactly (artifacts named after `name`).
fn screen_follows_window(server: &Server, client: &Xvfb, class: &str, name: &str) {
    require_program("xdotool");
    require_program("xsetroot");
    let alice = server.display_of("alice");
    // A background unlike the client's black screen: the whole session must show, at its size.
    assert!(Command::new("xsetroot")
        .args(["-solid", "#1f4e79"])
        .env("DISPLAY", &alice)
        .status()
        .unwrap()
        .success());
    wait_shown(client, &alice, &format!("resize-{name}-before"));
    assert_eq!(screen_size(&alice), Some((800, 600)));
    for (width, height) in [(1024u32, 700u32), (640, 480)] {
        // (The window may not be ready for display control at once: ask until it follows.)
        wait_until(
            Duration::from_secs(20),
            &format!("the session's screen to become {width}x{height}"),
            || {
                let _ = client
                    .command("xdotool")
                    .args(["search", "--class", class, "windowsize", "%@"])
                    .args([width.to_string(), height.to_string()])
                    .status();
                std::thread::sleep(Duration::from_millis(300));
                (screen_size(&alice) == Some((width, height))).then_some(())
            },
        );
        wait_shown(client, &alice, &format!("resize-{name}-{width}x{height}"));
        wait_until(
            Duration::from_secs(10),
            &format!("every pixel at {width}x{height} ({name})"),
            || {
                let desktop = deskport_testsupport::screenshot(&alice).ok()?;
                exactly_shown(&client.screenshot(), &desktop).then_some(())
            },
        );
    }
}

/// Whether `shot` shows `desktop` pixel for pixel (where its top-left corner is found).
fn exactly_shown(shot: &RgbImage, desktop: &RgbImage) -> bool {
    let needle = image::imageops::crop_imm(desktop, 0, 0, 200, 60).to_image();
    image_util::find(shot, &needle, 0).is_some_and(|at| crate::rdp::exactly(shot, at, desktop))
}

/// Where the pointer is on `display`.
fn pointer_on(display: &str) -> Option<(i32, i32)> {
    let out = Command::new("xdotool")
        .args(["getmouselocation", "--shell"])
        .env("DISPLAY", display)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((value("X=")?, value("Y=")?))
}

/// The client shows the session's pointer shape, and when a program in the session moves the
/// pointer the client's follows (xfreerdp and `deskport connect`).
#[test]
fn pointer_moves_in_the_session_move_the_clients_pointer() {
    require_program("xdotool");
    let dir = deskport_testsupport::data_dir();
    let server = Server::start(dir.path(), 3600);
    for client_kind in ["xfreerdp", "deskport"] {
        let client = Xvfb::start(1024, 768);
        // The client display's own pointer, before any RDP client runs.
        let own_pointer = deskport_testsupport::cursor_image(client.display()).unwrap();
        let _client_process = if client_kind == "xfreerdp" {
            xfreerdp_to(
                &client,
                &server.target(),
                dir.path(),
                "alice",
                PASSWORD,
                &["/sec:nla", "/size:800x600"],
            )
            .process
        } else {
            deskport_window(&client, &server.target(), dir.path())
        };
        let alice = server.display_of("alice");
        wait_shown(&client, &alice, &format!("pointer-{client_kind}"));
        // The client's window gets the focus (clients move the pointer only then) and the
        // pointer: the session's follows (input).
        assert!(client
            .command("xdotool")
            .args([
                "search",
                "--class",
                client_kind,
                "windowfocus",
                "mousemove",
                "20",
                "30"
            ])
            .status()
            .unwrap()
            .success());
        wait_until(
            Duration::from_secs(10),
            "the session's pointer to follow the client's",
            || (pointer_on(&alice) == Some((20, 30))).then_some(()),
        );
        // Over the terminal: the client shows the session's pointer (an I-beam).
        wait_until(
            Duration::from_secs(10),
            &format!("the session's pointer shape on {client_kind}'s display"),
            || {
                let session = deskport_testsupport::cursor_image(&alice).ok()?;
                let shown = deskport_testsupport::cursor_image(client.display()).ok()?;
                (shown.0 != own_pointer.0 || shown.2 != own_pointer.2)
                    .then_some(())
                    .filter(|_| same_pointer(&session, &shown))
            },
        );
        // A program in the session moves it: the client's follows. (xfreerdp 2.11 receives
        // the Pointer Position update but moves its pointer only while it believes it has the
        // focus, which it does not here under Xvfb without a window manager, even after
        // `xdotool windowfocus`: checked with deskport's own client.)
        if client_kind == "xfreerdp" {
            continue;
        }
        for (x, y) in [(300, 200), (555, 444)] {
            assert!(Command::new("xdotool")
                .args(["mousemove", &x.to_string(), &y.to_string()])
                .env("DISPLAY", &alice)
                .status()
                .unwrap()
                .success());
            wait_until(
                Duration::from_secs(10),
                &format!("{client_kind}'s pointer to move to {x},{y}"),
                || (pointer_on(client.display()) == Some((x, y))).then_some(()),
            );
        }
    }
}
