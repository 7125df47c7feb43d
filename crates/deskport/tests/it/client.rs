//! `deskport connect` against real servers: deskport's own RDP server and FreeRDP's shadow
//! server. Headless screenshots must equal the server display's test pattern; the window must
//! show it on a client display and carry keys and clicks to the server's display; every
//! failure a user meets ends with exit status 1 and a message that names the cause.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use deskport_testsupport::servers::{XrdpServer, XRDP_PASSWORD};
use deskport_testsupport::{
    free_port, image_util, require_program, require_root, wait_until, Netns, ProbeEvent,
    ProcessGuard, Xvfb,
};
use image::RgbImage;

use crate::rdp::{find_desktop, wait_for_desktop, RdpServer, PASSWORD};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `deskport connect` with `args`, the password on stdin (`-p -`), its own known-hosts file.
fn connect(dir: &Path, args: &[&str], password: &str) -> Output {
    connect_with(
        Command::new(env!("CARGO_BIN_EXE_deskport")),
        dir,
        args,
        password,
    )
}

/// `deskport connect` as `command` (`RUST_LOG=warn` unless it sets it).
fn connect_with(mut command: Command, dir: &Path, args: &[&str], password: &str) -> Output {
    if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
        command.env("RUST_LOG", "warn");
    }
    let mut child = command
        .arg("connect")
        .args(args)
        .args(["-p", "-", "--known-hosts"])
        .arg(dir.join("known_hosts"))
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A usage error exits before reading stdin: a broken pipe is expected then.
    let _ = writeln!(child.stdin.take().unwrap(), "{password}");
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks that `png` shows exactly `pattern`, and keeps it as an artifact.
fn assert_shows(png: &Path, pattern: &RgbImage, artifact: &str) {
    let shot = image::open(png).unwrap().to_rgb8();
    image_util::save_png(
        &shot,
        &deskport_testsupport::artifact_dir("client").join(format!("{artifact}.png")),
    );
    assert_eq!(shot.dimensions(), pattern.dimensions(), "{artifact}");
    let diff = image_util::diff_fraction(&shot, (0, 0), pattern, (0, 0), pattern.dimensions(), 8);
    assert!(
        diff < 0.01,
        "{artifact}: {:.2}% of the pixels differ",
        diff * 100.0
    );
}

fn known_fingerprint(dir: &Path, endpoint: &str) -> String {
    let known = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
    let line = known
        .lines()
        .find(|l| l.starts_with(&format!("{endpoint} ")))
        .unwrap_or_else(|| panic!("no line for {endpoint} in {known}"));
    line.split_whitespace().nth(2).unwrap().to_owned()
}

#[test]
fn screenshots_of_deskports_server_with_nla_tls_and_auto() {
    let dir = deskport_testsupport::data_dir();
    let server = RdpServer::start(dir.path(), &["--no-nla-only"], None);
    let target = server.target();
    for (i, sec) in ["nla", "tls", "auto"].into_iter().enumerate() {
        let png = dir.path().join(format!("{sec}.png"));
        let out = connect(
            dir.path(),
            &[
                &target,
                "-u",
                "alice",
                "--sec",
                sec,
                "--screenshot",
                png.to_str().unwrap(),
            ],
            PASSWORD,
        );
        assert!(out.status.success(), "--sec {sec}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Trust on first use: told once, then silent.
        assert_eq!(
            stderr.contains("is now trusted"),
            i == 0,
            "--sec {sec}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("(640x480)"),
            "{}",
            text(&out)
        );
        assert_shows(&png, &server.pattern, &format!("deskport-server-{sec}"));
    }
    let fingerprint = known_fingerprint(dir.path(), &target);
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    assert_eq!(
        server.log().matches("Session started").count(),
        3,
        "{}",
        server.log()
    );
}

/// `deskport connect` offers the graphics pipeline: against deskport it gets 10.7 with AVC
/// disabled, and its screenshot is the server's screen pixel for pixel (the text as
/// ClearCodec); `--no-gfx` gets classic bitmap updates, just as exact (the text as 24-bit
/// interleaved RLE).
#[test]
fn screenshots_over_the_graphics_pipeline_and_without_it() {
    let dir = deskport_testsupport::data_dir();
    let server = RdpServer::start_with(
        dir.path(),
        &["--no-nla-only"],
        (640, 480),
        &[("RUST_LOG", "info,deskport_rdp::encode=debug")],
    );
    let pattern = server.desktop().draw_text(
        16,
        16,
        &[
            "The quick brown fox jumps over the lazy dog 0123456789",
            "deskport connect: text on a flat colour, as desktops show it",
        ],
    );
    let target = server.target();
    for (name, extra) in [("gfx", None), ("no-gfx", Some("--no-gfx"))] {
        let png = dir.path().join(format!("{name}.png"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_deskport"));
        command.env("RUST_LOG", "info");
        let mut args = vec![target.as_str(), "-u", "alice"];
        args.extend(extra);
        args.extend(["--screenshot", png.to_str().unwrap()]);
        let out = connect_with(command, dir.path(), &args, PASSWORD);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let confirmed = r#"The server confirmed the graphics pipeline version="0xa0701""#;
        assert_eq!(
            stderr.contains(confirmed),
            extra.is_none(),
            "{name}: {stderr}"
        );
        if extra.is_none() {
            assert!(stderr.contains("AVC_DISABLED"), "{stderr}");
        }
        let shot = image::open(&png).unwrap().to_rgb8();
        image_util::save_png(
            &shot,
            &deskport_testsupport::artifact_dir("client")
                .join(format!("deskport-server-{name}.png")),
        );
        assert_eq!(shot.dimensions(), pattern.dimensions());
        assert_eq!(
            image_util::diff_fraction(&shot, (0, 0), &pattern, (0, 0), shot.dimensions(), 0),
            0.0,
            "{name}: every pixel"
        );
    }
    let log = server.log();
    let rle = crate::rdp::log_total(&log, "Bitmaps sent", "rle");
    assert!(rle > 0, "the text as RLE bitmaps: {log}");
    // And on the graphics pipeline as ClearCodec.
    let log = wait_until(Duration::from_secs(10), "the session's totals", || {
        let log = server.log();
        log.contains("Graphics pipeline totals").then_some(log)
    });
    assert!(crate::rdp::gfx_total(&log, "clear") > 0, "{log}");
    assert_eq!(log.matches("gfx=true").count(), 1, "{log}");
    assert_eq!(log.matches("gfx=false").count(), 1, "{log}");
    assert_eq!(
        log.matches("The screen goes over the graphics pipeline")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("AVC_DISABLED"), "{log}");
}

#[test]
fn a_changed_certificate_is_refused_and_a_pin_is_enforced() {
    let dir = deskport_testsupport::data_dir();
    let server = RdpServer::start(dir.path(), &[], None);
    let target = server.target();
    let png = dir.path().join("shot.png");
    let shot = png.to_str().unwrap();
    let out = connect(
        dir.path(),
        &[&target, "-u", "bob", "--screenshot", shot],
        PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out));
    let real = known_fingerprint(dir.path(), &target);

    // The server "changed" its certificate: the known-hosts file names another one.
    let fake = real.replace(&real[..2], if &real[..2] == "00" { "11" } else { "00" });
    std::fs::write(
        dir.path().join("known_hosts"),
        format!("# mine\n{target} SHA256 {fake}\n"),
    )
    .unwrap();
    let out = connect(
        dir.path(),
        &[&target, "-u", "bob", "--screenshot", shot],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("has CHANGED") && all.contains(&fake) && all.contains(&real),
        "{all}"
    );
    assert!(
        !server.log().contains("Logon failed"),
        "no password may be sent: {}",
        server.log()
    );
    assert_eq!(
        known_fingerprint(dir.path(), &target),
        fake,
        "the file is left alone"
    );

    // A pin overrides the file: the right one connects, a wrong one is refused.
    let pin = real.replace(':', "").to_uppercase();
    let out = connect(
        dir.path(),
        &[
            &target,
            "-u",
            "bob",
            "--cert-fingerprint",
            &pin,
            "--screenshot",
            shot,
        ],
        PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = connect(
        dir.path(),
        &[
            &target,
            "-u",
            "bob",
            "--cert-fingerprint",
            &fake,
            "--screenshot",
            shot,
        ],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("not the pinned one") && all.contains(&real),
        "{all}"
    );
}

#[test]
fn every_failure_says_what_went_wrong() {
    let dir = deskport_testsupport::data_dir();
    let png = dir.path().join("never.png");
    let shot = png.to_str().unwrap();

    // Nothing listens: the article's first step (open the port) was not done.
    let closed = format!("127.0.0.1:{}", free_port(LO));
    let out = connect(
        dir.path(),
        &[&closed, "-u", "alice", "--screenshot", shot],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("refused the connection") && all.contains("security group"),
        "{all}"
    );

    // Something accepts but never speaks RDP.
    let silent = std::net::TcpListener::bind((LO, 0)).unwrap();
    let silent_target = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let out = connect(
        dir.path(),
        &[
            &silent_target,
            "-u",
            "alice",
            "--timeout",
            "2",
            "--screenshot",
            shot,
        ],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("within 2 s"), "{all}");
    drop(silent);

    let server = RdpServer::start(dir.path(), &["--nla-only"], None);
    let target = server.target();
    let out = connect(
        dir.path(),
        &[&target, "-u", "alice", "--sec", "tls", "--screenshot", shot],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("requires Network Level Authentication"),
        "{all}"
    );

    let out = connect(
        dir.path(),
        &[&target, "-u", "alice", "--screenshot", shot],
        "wrong password",
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("refused the user name or password"), "{all}");
    assert!(!png.exists());

    // Usage errors: exit status 2, nothing attempted.
    for (args, expect) in [
        (vec![target.as_str(), "-g", "10x10"], "200-8192"),
        (vec![target.as_str(), "--sec", "kerberos"], "kerberos"),
        (vec!["127.0.0.1:0"], "port"),
        (vec![target.as_str(), "--timeout", "0"], "timeout"),
        (
            vec![target.as_str(), "-f", "--screenshot", shot],
            "do not go together",
        ),
        (
            vec![target.as_str(), "--audio", "--screenshot", shot],
            "--audio and --screenshot do not go together",
        ),
    ] {
        let out = connect(dir.path(), &args, PASSWORD);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(expect), "{args:?}: {all}");
    }
    let bad = dir.path().join("bad.rdp");
    std::fs::write(&bad, "full address:s:127.0.0.1\ndesktopwidth:i:wide\n").unwrap();
    let out = connect(
        dir.path(),
        &[bad.to_str().unwrap(), "--screenshot", shot],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("line 2"), "{all}");
}

#[test]
fn locked_out_accounts_are_reported_as_such() {
    let dir = deskport_testsupport::data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[rdp_server]\nlockout_failures = 2\nlockout_secs = 60\n",
    )
    .unwrap();
    let server = RdpServer::start(dir.path(), &[], Some(&config));
    let target = server.target();
    let png = dir.path().join("never.png");
    for _ in 0..2 {
        let out = connect(
            dir.path(),
            &[&target, "-u", "bob", "--screenshot", png.to_str().unwrap()],
            "wrong",
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }
    let out = connect(
        dir.path(),
        &[&target, "-u", "bob", "--screenshot", png.to_str().unwrap()],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("locked out"), "{all}");
}

#[test]
fn a_filtered_port_is_reported_as_filtered() {
    require_root();
    require_program("nft");
    let ns = Netns::new();
    ns.run(&["ip", "link", "set", "lo", "up"]);
    let port = 3389;
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = nft.spawn().unwrap();
    write!(
        child.stdin.take().unwrap(),
        "table inet t {{\n chain out {{\n type filter hook output priority 0; tcp dport {port} drop\n }}\n}}\n"
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let dir = deskport_testsupport::data_dir();
    let mut command = ns.command(env!("CARGO_BIN_EXE_deskport"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    let png = dir.path().join("never.png");
    let out = connect_with(
        command,
        dir.path(),
        &[
            "127.0.0.1",
            "-u",
            "alice",
            "--timeout",
            "2",
            "--screenshot",
            png.to_str().unwrap(),
        ],
        PASSWORD,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no answer from 127.0.0.1:3389 within 2 s") && all.contains("filtered"),
        "{all}"
    );
}

#[test]
fn rdp_files_as_mstsc_writes_them() {
    let dir = deskport_testsupport::data_dir();
    let server = RdpServer::start(dir.path(), &["--no-nla-only"], None);
    let file = dir.path().join("office.rdp");
    let text_utf16: Vec<u8> = format!(
        "screen mode id:i:1\r\ndesktopwidth:i:1024\r\ndesktopheight:i:768\r\nfull address:s:{}\r\n\
         username:s:alice\r\nenablecredsspsupport:i:0\r\n",
        server.target()
    )
    .encode_utf16()
    .flat_map(u16::to_le_bytes)
    .collect();
    std::fs::write(&file, [&[0xff, 0xfe][..], &text_utf16].concat()).unwrap();
    let png = dir.path().join("shot.png");
    let out = connect(
        dir.path(),
        &[
            file.to_str().unwrap(),
            "--screenshot",
            png.to_str().unwrap(),
        ],
        PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_shows(&png, &server.pattern, "rdp-file");
    // enablecredsspsupport:i:0 means TLS security: the server saw a TLS logon.
    assert!(
        server.log().contains("security=\"tls\""),
        "{}",
        server.log()
    );
}

#[test]
fn the_window_shows_the_desktop_and_carries_keys_and_clicks() {
    require_program("xdotool");
    let dir = deskport_testsupport::data_dir();
    let server = RdpServer::start(dir.path(), &[], None);
    let client = Xvfb::start(1024, 768);
    let log = dir.path().join("client.log");
    let mut command = client.command(env!("CARGO_BIN_EXE_deskport"));
    command
        .args([
            "connect",
            &server.target(),
            "-u",
            "alice",
            "-p",
            PASSWORD,
            "--known-hosts",
        ])
        .arg(dir.path().join("known_hosts"))
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("client.err")).unwrap());
    let mut process = ProcessGuard::spawn("deskport connect", &mut command).unwrap();
    let err = dir.path().join("client.err");
    let _keep = KeepLog(&err);
    let shot = wait_for_desktop(&client, &server.pattern, "client-window", || {
        process.try_wait().is_none()
    });
    let (x, y) = find_desktop(&shot, &server.pattern).unwrap();

    // The server's display now records the input that reaches it.
    let probe = server.desktop().input_probe();
    let xdotool = |args: &[&str]| {
        let status = client.command("xdotool").args(args).status().unwrap();
        assert!(status.success(), "xdotool {args:?}");
    };
    let (cx, cy) = (x + 100, y + 50);
    xdotool(&["mousemove", &cx.to_string(), &cy.to_string()]);
    xdotool(&["click", "3"]);
    xdotool(&["key", "a"]);
    xdotool(&["key", "Up"]);
    let events = wait_until(
        Duration::from_secs(10),
        "the input on the server's display",
        || {
            let events = probe.events();
            (events.len() >= 3).then_some(events)
        },
    );
    assert_eq!(
        events[..3],
        [
            ProbeEvent::Button(3, 100, 50),
            ProbeEvent::Key(38),
            ProbeEvent::Key(111)
        ],
        "right click at (100, 50), `a`, Up"
    );
    assert!(process.try_wait().is_none(), "the client is still running");
}

/// FreeRDP's shadow server sharing a display that shows the test pattern.
struct ShadowServer {
    port: u16,
    pattern: RgbImage,
    _animation: deskport_testsupport::Animation,
    _process: ProcessGuard,
    _desktop: Xvfb,
}

impl ShadowServer {
    fn start(dir: &Path) -> Self {
        require_program("freerdp-shadow-cli");
        let desktop = Xvfb::start(800, 600);
        let pattern = desktop.draw_test_pattern();
        // It sends nothing until the screen changes.
        let animation = desktop.animate_corner();
        let port = free_port(LO);
        let process =
            deskport_testsupport::servers::freerdp_shadow(dir, desktop.display(), port, None);
        Self {
            port,
            pattern,
            _animation: animation,
            _process: process,
            _desktop: desktop,
        }
    }
}

/// FreeRDP's shadow server serves `deskport connect` over the graphics pipeline (it confirms
/// 10.7 with AVC disabled) and, with `--no-gfx`, with classic updates.
#[test]
fn screenshots_of_freerdps_shadow_server() {
    let dir = deskport_testsupport::data_dir();
    let server = ShadowServer::start(dir.path());
    let target = format!("127.0.0.1:{}", server.port);
    for (sec, gfx) in [("tls", true), ("auto", true), ("tls", false)] {
        let name = if gfx {
            sec.to_owned()
        } else {
            format!("{sec}-no-gfx")
        };
        let png = dir.path().join(format!("shadow-{name}.png"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_deskport"));
        command.env("RUST_LOG", "info");
        let mut args = vec![target.as_str(), "-u", "anyone", "--sec", sec];
        args.extend((!gfx).then_some("--no-gfx"));
        args.extend(["--screenshot", png.to_str().unwrap()]);
        let out = connect_with(command, dir.path(), &args, "any password");
        assert!(out.status.success(), "{name}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("The server confirmed the graphics pipeline"),
            gfx,
            "{name}: {stderr}"
        );
        assert_shows(&png, &server.pattern, &format!("shadow-{name}"));
    }
}

/// Prints a log file when the test fails.
struct KeepLog<'a>(&'a Path);

impl Drop for KeepLog<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {}:\n{}",
                self.0.display(),
                std::fs::read_to_string(self.0).unwrap_or_default()
            );
        }
    }
}

/// The xrdp session's background.
const XRDP_BACKGROUND: [u8; 3] = [0x2a, 0x7f, 0x62];

/// xrdp with Xvnc sessions that show a solid background and a terminal that writes what is
/// typed into the returned file.
fn start_xrdp(dir: &Path) -> (XrdpServer, PathBuf) {
    require_program("xsetroot");
    let typed = dir.join("xrdp").join("typed.txt");
    let server = XrdpServer::start(
        dir,
        &format!(
            "#!/bin/sh\nxsetroot -solid '#{:02x}{:02x}{:02x}'\nexec xterm -geometry 60x8+20+20 -e /bin/sh -c 'exec cat > {}'\n",
            XRDP_BACKGROUND[0],
            XRDP_BACKGROUND[1],
            XRDP_BACKGROUND[2],
            typed.display()
        ),
    );
    (server, typed)
}

/// Whether at least `share` of `image`'s pixels have `color`.
fn mostly(image: &RgbImage, color: [u8; 3], share: f64) -> bool {
    let n = image.pixels().filter(|p| p.0 == color).count();
    n as f64 >= share * f64::from(image.width() * image.height())
}

#[test]
fn xrdp_in_a_window_and_headless() {
    let dir = deskport_testsupport::data_dir();
    let (server, typed) = start_xrdp(dir.path());
    let target = server.target();
    let _log = KeepLog(&dir.path().join("xrdp").join("xrdp.log"));

    // xrdp 0.9 has no NLA: asking for it is refused with the reason.
    let out = connect(
        dir.path(),
        &[
            &target,
            "-u",
            server.user(),
            "--sec",
            "nla",
            "--screenshot",
            "/dev/null",
        ],
        XRDP_PASSWORD,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("does not support Network Level Authentication"),
        "{}",
        text(&out)
    );

    // A window: the session's desktop shows, and typed keys reach its terminal.
    let client = Xvfb::start(1024, 768);
    let window = ProcessGuard::spawn(
        "deskport connect",
        client
            .command(env!("CARGO_BIN_EXE_deskport"))
            .args(["connect", &target, "-u", server.user(), "-p", XRDP_PASSWORD])
            .args(["--sec", "tls", "-g", "800x600", "--known-hosts"])
            .arg(dir.path().join("known_hosts"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("window.log")).unwrap()),
    )
    .unwrap();
    let _window_log = KeepLog(&dir.path().join("window.log"));
    let shot = wait_until(
        Duration::from_secs(30),
        "the xrdp session's desktop in the window",
        || {
            let shot = client.screenshot();
            let area = image::imageops::crop_imm(&shot, 0, 0, 800, 600).to_image();
            mostly(&area, XRDP_BACKGROUND, 0.5).then_some(shot)
        },
    );
    image_util::save_png(
        &shot,
        &deskport_testsupport::artifact_dir("client").join("xrdp-window.png"),
    );
    let xdotool = |args: &[&str]| {
        assert!(client
            .command("xdotool")
            .args(args)
            .status()
            .unwrap()
            .success());
    };
    xdotool(&["mousemove", "100", "50", "click", "1"]);
    xdotool(&["type", "--delay", "40", "hello xrdp 42"]);
    xdotool(&["key", "Return"]);
    wait_until(
        Duration::from_secs(15),
        "the typed line in the xrdp session",
        || {
            std::fs::read_to_string(&typed)
                .ok()
                .filter(|t| t.contains("hello xrdp 42\n"))
        },
    );
    drop(window);

    // Headless: the (same) session, once its screen is complete and still.
    let png = dir.path().join("xrdp.png");
    let out = connect(
        dir.path(),
        &[
            &target,
            "-u",
            server.user(),
            "--sec",
            "tls",
            "-g",
            "800x600",
            "--screenshot",
            png.to_str().unwrap(),
        ],
        XRDP_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out));
    let shot = image::open(&png).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (800, 600));
    image_util::save_png(
        &shot,
        &deskport_testsupport::artifact_dir("client").join("xrdp-screenshot.png"),
    );
    assert!(
        mostly(&shot, XRDP_BACKGROUND, 0.5),
        "the screenshot shows the session"
    );
}
