//! `deskport up` and the knowledge-base article end to end, with real programs: the manager,
//! the gateway firewall and the RDP server in one process, the deskport CLI changing rules and
//! switches, and xfreerdp, rdesktop and deskport's own client connecting (or being refused).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deskport_testsupport::{
    free_port, image_util, require_program, wait_until, ProcessGuard, Xvfb,
};
use image::RgbImage;
use nix::sys::signal::Signal;

use crate::rdp::{rdesktop_to, xfreerdp_to, PASSWORD};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ADMIN_PASSWORD: &str = "admin password for the test";

/// A running `deskport up`.
struct Up {
    process: ProcessGuard,
    stdout: PathBuf,
    stderr: PathBuf,
    dir: PathBuf,
    port: u16,
    display: String,
}

impl Up {
    fn start(dir: &Path, port: u16, console: u16, firewall: &str) -> Self {
        let config = dir.join("config.toml");
        if !config.exists() {
            std::fs::write(&config, "").unwrap();
        }
        let stamp = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());
        let stdout = dir.join(format!("up-{stamp}.out"));
        let stderr = dir.join(format!("up-{stamp}.err"));
        let process = ProcessGuard::spawn(
            "deskport up",
            Command::new(env!("CARGO_BIN_EXE_deskport"))
                .arg("up")
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--console", &format!("127.0.0.1:{console}")])
                .args(["--rdp-port", &port.to_string(), "--desktop", "1024x768"])
                .args(["--firewall", firewall])
                .env("DESKPORT_CONFIG", &config)
                .env("DESKPORT_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .env("DESKPORT_RDP_USER", "alice")
                .env("DESKPORT_RDP_PASSWORD", PASSWORD)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        )
        .unwrap();
        let mut up = Self {
            process,
            stdout,
            stderr,
            dir: dir.to_owned(),
            port,
            display: String::new(),
        };
        let out = wait_until(Duration::from_secs(60), "deskport up to be ready", || {
            assert!(
                up.process.try_wait().is_none(),
                "deskport up exited: {}\n{}",
                up.output(),
                up.log()
            );
            let out = up.output();
            out.contains("deskport is up").then_some(out)
        });
        up.display = out
            .split("desktop on display ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        up
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A deskport CLI command against this manager (the config `up` wrote); its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(args)
            .env("DESKPORT_CONFIG", self.dir.join("config.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deskport {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(mut self) {
        self.process.signal(Signal::SIGINT);
        let status = self.process.wait_timeout(Duration::from_secs(20));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "Ctrl-C stops deskport up cleanly: {}",
            self.log()
        );
    }
}

/// Where the instance's desktop shows on the client's screen, if it does all of it.
fn find_screen(shot: &RgbImage, desktop: &RgbImage) -> Option<(u32, u32)> {
    // The terminal's title bar and first line: the most distinctive part of the desktop.
    let (cx, cy) = (40, 40);
    let needle = image::imageops::crop_imm(desktop, cx, cy, 256, 48).to_image();
    let (x, y) = image_util::find(shot, &needle, 8)?;
    let (ox, oy) = (x.checked_sub(cx)?, y.checked_sub(cy)?);
    if ox + desktop.width() > shot.width() || oy + desktop.height() > shot.height() {
        return None;
    }
    let diff = image_util::diff_fraction(shot, (ox, oy), desktop, (0, 0), desktop.dimensions(), 8);
    (diff < 0.01).then_some((ox, oy))
}

pub(crate) fn wait_for_screen(
    client: &Xvfb,
    display: &str,
    artifact: &str,
    mut running: impl FnMut() -> bool,
) {
    let started = Instant::now();
    let artifacts = deskport_testsupport::artifact_dir("up");
    let last = loop {
        assert!(
            running(),
            "the client exited before showing the desktop ({artifact})"
        );
        let desktop = deskport_testsupport::screenshot(display).ok();
        let shot = client.screenshot();
        if desktop
            .as_ref()
            .is_some_and(|d| find_screen(&shot, d).is_some())
        {
            eprintln!("{artifact}: desktop shown after {:?}", started.elapsed());
            image_util::save_png(&shot, &artifacts.join(format!("{artifact}.png")));
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break (shot, desktop);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // For the post-mortem: what the client showed, and the desktop it should have shown.
    let (shot, desktop) = last;
    image_util::save_png(&shot, &artifacts.join(format!("{artifact}-client.png")));
    if let Some(desktop) = desktop {
        image_util::save_png(&desktop, &artifacts.join(format!("{artifact}-desktop.png")));
    }
    panic!(
        "the client did not show the instance's desktop ({artifact}) in 30 s; screenshots in {}",
        artifacts.display()
    );
}

/// Sends an RDP negotiation request from `source`; whether an RDP server answered it.
fn rdp_answers(source: Ipv4Addr, target: SocketAddr) -> bool {
    deskport_testsupport::connect_from(source.into(), target).is_ok_and(rdp_confirms)
}

/// Sends an RDP negotiation request on `stream`; whether an X.224 Connection Confirm came back.
pub(crate) fn rdp_confirms(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // TPKT, X.224 Connection Request, RDP_NEG_REQ (TLS | CredSSP).
    let request = [
        0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x08, 0x00, 0x03, 0, 0, 0,
    ];
    if stream.write_all(&request).is_err() {
        return false;
    }
    let mut answer = [0u8; 19];
    // An X.224 Connection Confirm.
    stream.read_exact(&mut answer).is_ok() && answer[0] == 0x03 && answer[5] == 0xd0
}

fn rule_id(up: &Up, cidr: &str) -> String {
    rule_for(
        &up.cli(&["rule", "list", "--group", "default", "--json"]),
        cidr,
    )
}

/// The ID of the rule for `cidr` in `deskport rule list --json`'s output.
pub(crate) fn rule_for(listing: &str, cidr: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(listing).unwrap();
    list["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["remote_ip_prefix"] == cidr)
        .unwrap_or_else(|| panic!("no rule for {cidr}: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_article_end_to_end_with_the_gateway() {
    article_end_to_end("gateway");
}

/// The same story with `up --firewall nft`, in a network namespace of its own (its loopback,
/// its nftables ruleset and its conntrack table are the test's alone): the RDP server listens
/// on the public port itself, and an nftables table judges new connections to it.
#[test]
fn the_article_end_to_end_with_nftables() {
    require_program("nft");
    require_program("conntrack");
    let ns = deskport_testsupport::Netns::new();
    // Every program the story starts (deskport up, Xvfb, the clients) is started from this
    // thread and so runs in the namespace too.
    ns.run_in(|| article_end_to_end("nft"));
}

/// The knowledge-base article with `deskport up --firewall FIREWALL`.
fn article_end_to_end(firewall: &str) {
    require_program("xfreerdp");
    require_program("rdesktop");
    let dir = deskport_testsupport::data_dir();
    let port = free_port(LO);
    let console = free_port(LO);
    let up = Up::start(dir.path(), port, console, firewall);
    let target = up.target();
    let public: SocketAddr = target.parse().unwrap();
    let out = up.output();
    assert!(out.contains(&format!("admin / {ADMIN_PASSWORD}")), "{out}");
    assert!(out.contains(&format!("alice / {PASSWORD}")), "{out}");
    let fingerprint = out
        .split("certificate:    SHA256 ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap()
        .to_owned();
    let client = Xvfb::start(1280, 900);
    let logs = dir.path();

    // 1. The security group allows only HTTP and HTTPS: RDP is refused, and the clients say so.
    let (code, output) =
        xfreerdp_to(&client, &target, logs, "alice", PASSWORD, &["/sec:nla"]).finish();
    assert_ne!(code, Some(0), "xfreerdp before the rule: {output}");
    let (code, output) = rdesktop_to(&client, &target, logs, "alice", PASSWORD).finish();
    assert_ne!(code, Some(0), "rdesktop before the rule: {output}");
    let png = dir.path().join("never.png");
    let connect = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args([
                "connect",
                &target,
                "-u",
                "alice",
                "-p",
                "-",
                "--timeout",
                "10",
                "--screenshot",
            ])
            .arg(&png)
            .arg("--known-hosts")
            .arg(dir.path().join("known_hosts"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = writeln!(child.stdin.take().unwrap(), "{password}");
        child.wait_with_output().unwrap()
    };
    let refused = connect(PASSWORD);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(
        message.contains("security group allow your address"),
        "{message}"
    );
    if firewall == "gateway" {
        assert!(up.log().contains("Deny"), "the gateway logs the refusals");
    } else {
        let table = Command::new("nft")
            .args(["list", "table", "inet", "deskport"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.contains(&format!("th dport {port}")), "{table}");
    }

    // 2. Open the RDP port for 127.0.0.1/32: xfreerdp with NLA shows the desktop.
    up.cli(&[
        "rule",
        "add",
        "--group",
        "default",
        "--protocol",
        "tcp",
        "--port",
        &port.to_string(),
        "--cidr",
        "127.0.0.1/32",
    ]);
    wait_until(Duration::from_secs(10), "the rule to be in force", || {
        rdp_answers(Ipv4Addr::LOCALHOST, public).then_some(())
    });
    let mut xfreerdp = xfreerdp_to(&client, &target, logs, "alice", PASSWORD, &["/sec:nla"]);
    wait_for_screen(&client, &up.display, "xfreerdp-nla", || {
        xfreerdp.process.try_wait().is_none()
    });
    drop(xfreerdp);
    let shot = connect(PASSWORD);
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let known = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap();
    assert!(
        known.contains(&fingerprint),
        "the certificate `up` printed is the one served: {known}"
    );

    // 3. NLA only: rdesktop (no CredSSP with NTLM) is refused with the reason; then allowed.
    let (code, output) = rdesktop_to(&client, &target, logs, "alice", PASSWORD).finish();
    assert_ne!(code, Some(0));
    assert!(output.contains("CredSSP required by server"), "{output}");
    up.cli(&["instance", "rdp", "desktop", "--no-nla-only"]);
    wait_until(
        Duration::from_secs(10),
        "the switch to reach the RDP server",
        || up.log().contains("nla_only=false").then_some(()),
    );
    let mut rdesktop = rdesktop_to(&client, &target, logs, "alice", PASSWORD);
    wait_for_screen(&client, &up.display, "rdesktop", || {
        rdesktop.process.try_wait().is_none()
    });

    // 4 and 5. Allow only 127.0.0.2: the live rdesktop session from 127.0.0.1 is cut, new
    // connections from 127.0.0.1 are refused and those from 127.0.0.2 reach the RDP server.
    up.cli(&[
        "rule",
        "add",
        "--group",
        "default",
        "--protocol",
        "tcp",
        "--port",
        &port.to_string(),
        "--cidr",
        "127.0.0.2/32",
    ]);
    assert!(
        rdesktop.process.try_wait().is_none(),
        "still connected while its rule stands"
    );
    let id = rule_id(&up, "127.0.0.1/32");
    let deleted = Instant::now();
    up.cli(&["rule", "delete", &id]);
    wait_until(
        Duration::from_secs(10),
        "the live session to be cut",
        || rdesktop.process.try_wait().map(|_| ()),
    );
    eprintln!(
        "rule deleted -> rdesktop session cut after {:?}",
        deleted.elapsed()
    );
    assert!(
        !rdp_answers(Ipv4Addr::LOCALHOST, public),
        "127.0.0.1 is refused"
    );
    assert!(
        rdp_answers(Ipv4Addr::new(127, 0, 0, 2), public),
        "127.0.0.2 reaches the RDP server"
    );

    // 6. Remote connections off: the port refuses.
    up.cli(&["instance", "rdp", "desktop", "--disable"]);
    wait_until(
        Duration::from_secs(10),
        "the port to close",
        || match TcpStream::connect_timeout(&public, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );

    // Ctrl-C stops everything; a second `up` keeps the state: rules, switches, certificate.
    up.stop();
    let up = Up::start(dir.path(), port, console, firewall);
    assert!(up.output().contains(&fingerprint), "{}", up.output());
    let rules = up.cli(&["rule", "list", "--group", "default"]);
    assert!(
        rules.contains("127.0.0.2/32") && !rules.contains("127.0.0.1/32"),
        "{rules}"
    );
    let show = up.cli(&["instance", "show", "desktop"]);
    assert!(show.contains("remote desktop:    disabled"), "{show}");
    assert!(
        TcpStream::connect_timeout(&public, Duration::from_secs(2)).is_err(),
        "still refused"
    );
    up.stop();
    if firewall == "nft" {
        let listed = Command::new("nft")
            .args(["list", "table", "inet", "deskport"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!listed.success(), "the table goes with `up`");
    }
}

/// Issue 16: remote desktop through 443 with the article's default group (80 and 443 only):
/// the RD Gateway on `up`'s HTTPS listener carries xfreerdp (WebSocket and legacy forms) and
/// `deskport connect` to the instance while its RDP port stays refused; a wrong token and a
/// channel to anything else are refused before any RDP byte; switching gateway access off
/// cuts a live session; revoking the token refuses it; all of it is in the audit log.
#[test]
fn the_desktop_through_the_rd_gateway_with_port_3389_closed() {
    require_program("xfreerdp");
    let dir = deskport_testsupport::data_dir();
    let port = free_port(LO);
    let console = free_port(LO);
    let up = Up::start(dir.path(), port, console, "gateway");
    let target = up.target();
    let public: SocketAddr = target.parse().unwrap();
    let client = Xvfb::start(1280, 900);
    let logs = dir.path();

    // The article's start: the group allows only HTTP and HTTPS, RDP is refused; `up` says
    // how to go through 443 instead.
    assert!(!rdp_answers(Ipv4Addr::LOCALHOST, public), "3389 is closed");
    assert!(
        up.output().contains(&format!(
            "--gateway 127.0.0.1:{console} --gateway-token $TOKEN"
        )),
        "{}",
        up.output()
    );
    let minted = up.cli(&["instance", "rdp-token", "desktop"]);
    let token = minted.lines().last().unwrap().trim().to_owned();
    assert!(
        minted.contains(&format!("/g:127.0.0.1:{console}")),
        "the CLI shows how to use it: {minted}"
    );
    let gateway = format!("/g:127.0.0.1:{console}");
    let gat = format!("/gat:{token}");

    // 1. The WebSocket form, then the legacy form: the desktop shows.
    for (transport, artifact) in [
        ("/gt:http", "gateway-websocket"),
        ("/gt:http,no-websockets", "gateway-legacy"),
    ] {
        let mut x = xfreerdp_to(
            &client,
            &target,
            logs,
            "alice",
            PASSWORD,
            &["/sec:nla", &gateway, &gat, transport],
        );
        wait_for_screen(&client, &up.display, artifact, || {
            x.process.try_wait().is_none()
        });
    }
    assert!(
        !rdp_answers(Ipv4Addr::LOCALHOST, public),
        "3389 stayed closed"
    );

    // 2. deskport connect through the gateway (the gateway's certificate trusted on first use).
    let png = dir.path().join("through-gateway.png");
    let mut connect = Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args([
            "connect",
            &target,
            "-u",
            "alice",
            "-p",
            "-",
            "--timeout",
            "20",
        ])
        .args(["--gateway", &format!("127.0.0.1:{console}")])
        .args(["--gateway-token", &token, "--screenshot"])
        .arg(&png)
        .arg("--known-hosts")
        .arg(dir.path().join("known_hosts"))
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = writeln!(connect.stdin.take().unwrap(), "{PASSWORD}");
    let done = connect.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(done.status.success(), "deskport connect --gateway: {said}");
    assert!(said.contains("RD Gateway 127.0.0.1:"), "{said}");
    let shot = image::open(&png).unwrap().to_rgb8();
    let desktop = deskport_testsupport::screenshot(&up.display).unwrap();
    assert!(
        find_screen(&shot, &desktop).is_some(),
        "deskport connect shows the desktop through the gateway"
    );

    // 3. Refused before any RDP byte: a wrong token, and the right one for another host or
    // port (the gateway is no open relay).
    let refused = |flags: &[&str], target: &str, code: &str| {
        let mut args = vec!["/sec:nla", gateway.as_str()];
        args.extend_from_slice(flags);
        let (status, output) =
            xfreerdp_to(&client, target, logs, "alice", PASSWORD, &args).finish();
        assert_ne!(status, Some(0), "{output}");
        assert!(output.contains(code), "{target} {flags:?}: {output}");
    };
    refused(
        &["/gat:not-a-token", "/gt:http"],
        &target,
        "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED",
    );
    refused(
        &[&gat, "/gt:http"],
        &format!("127.0.0.2:{port}"),
        "E_PROXY_RAP_ACCESSDENIED",
    );
    refused(
        &[&gat, "/gt:http"],
        &format!("127.0.0.1:{console}"),
        "E_PROXY_RAP_ACCESSDENIED",
    );

    // 4. Gateway access off: the live session is cut, new ones are refused.
    let mut live = xfreerdp_to(
        &client,
        &target,
        logs,
        "alice",
        PASSWORD,
        &["/sec:nla", &gateway, &gat, "/gt:http"],
    );
    wait_for_screen(&client, &up.display, "gateway-before-cut", || {
        live.process.try_wait().is_none()
    });
    let switched = Instant::now();
    up.cli(&["instance", "rdp", "desktop", "--no-gateway"]);
    wait_until(
        Duration::from_secs(10),
        "the live session to be cut",
        || live.process.try_wait().map(|_| ()),
    );
    eprintln!(
        "gateway access off -> session cut after {:?}",
        switched.elapsed()
    );
    let (_, output) = live.finish();
    assert!(output.contains("E_PROXY_CONNECTIONABORTED"), "{output}");
    refused(&[&gat, "/gt:http"], &target, "E_PROXY_NAP_ACCESSDENIED");

    // 5. Back on, the token revoked: refused.
    up.cli(&["instance", "rdp", "desktop", "--gateway"]);
    let tokens: serde_json::Value =
        serde_json::from_str(&up.cli(&["instance", "rdp-tokens", "desktop", "--json"])).unwrap();
    let id = tokens["rdp_tokens"][0]["id"].as_str().unwrap().to_owned();
    up.cli(&["instance", "rdp-token", "desktop", "--revoke", &id]);
    refused(
        &[&gat, "/gt:http"],
        &target,
        "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED",
    );

    // 6. The same through `deskport rd-gateway` on its own (a bastion), asking the manager
    // with the admin's API token (the one `up` wrote into the CLI config).
    let minted = up.cli(&["instance", "rdp-token", "desktop"]);
    let gat = format!("/gat:{}", minted.lines().last().unwrap().trim());
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let api_token = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("token = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_owned();
    let console_cert = up
        .output()
        .split("console cert:   SHA256:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let gw_port = free_port(LO);
    let gw_log = dir.path().join("rd-gateway.log");
    let _bastion = ProcessGuard::spawn(
        "deskport rd-gateway",
        Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(["rd-gateway", "--listen", &format!("127.0.0.1:{gw_port}")])
            .args(["--manager", &format!("https://127.0.0.1:{console}")])
            .args(["--manager-fingerprint", &format!("SHA256:{console_cert}")])
            .args(["--token", &api_token, "--data-dir"])
            .arg(dir.path().join("rd-gateway"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdout(std::fs::File::create(&gw_log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("rd-gateway.err")).unwrap()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "deskport rd-gateway to listen",
        || TcpStream::connect((LO, gw_port)).ok().map(|_| ()),
    );
    let bastion = format!("/g:127.0.0.1:{gw_port}");
    let mut via_bastion = xfreerdp_to(
        &client,
        &target,
        logs,
        "alice",
        PASSWORD,
        &["/sec:nla", &bastion, &gat, "/gt:http"],
    );
    wait_for_screen(&client, &up.display, "rd-gateway-bastion", || {
        via_bastion.process.try_wait().is_none()
    });
    up.cli(&["instance", "rdp", "desktop", "--no-gateway"]);
    wait_until(
        Duration::from_secs(10),
        "the bastion's session to be cut",
        || via_bastion.process.try_wait().map(|_| ()),
    );
    let (_, output) = via_bastion.finish();
    assert!(output.contains("E_PROXY_CONNECTIONABORTED"), "{output}");
    let (status, output) = xfreerdp_to(
        &client,
        &target,
        logs,
        "alice",
        PASSWORD,
        &["/sec:nla", &bastion, "/gat:not-a-token", "/gt:http"],
    )
    .finish();
    assert_ne!(status, Some(0));
    assert!(
        output.contains("E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"),
        "{output}"
    );

    // 7. The audit log has every tunnel and every refusal, with why (the bastion's too).
    let audit = up.cli(&["audit", "list", "--limit", "200"]);
    for (action, count) in [
        ("gateway.session_opened", 5),
        ("gateway.session_closed", 5),
        ("gateway.refused", 6),
    ] {
        let seen = audit.lines().filter(|l| l.contains(action)).count();
        assert!(
            seen >= count,
            "{count} x {action} in the audit log, saw {seen}:\n{audit}"
        );
    }
    for why in [
        "the gateway token is not known",
        "is not this token's instance",
        "gateway access to the instance is switched off",
        "the gateway token was revoked",
        "cut: gateway access",
    ] {
        assert!(audit.contains(why), "{why:?} in the audit log:\n{audit}");
    }
    up.stop();
}
