//! The headline RDP benchmark (SPEC §7, issue 14): the heavy workload
//! (`deskport_testsupport::workload`: 1280x800, about 40% of the screen changing per frame,
//! 30 frames/s for 10 s, a frame code in every frame) served by deskport, by FreeRDP's shadow
//! server (planar, and `/gfx:AVC420`) and by xrdp 0.9 with an Xvnc session, each watched by
//! the same xfreerdp 2.11 on its own Xvfb; on loopback and through a 10 Mbit/s link.
//!
//! deskport is also measured through its RD Gateway (issue 16): the same server, xfreerdp
//! reaching it through `deskport manager`'s HTTPS listener (MS-TSGU, WebSocket form, a token
//! from `deskport instance rdp-token`); bytes are then those the gateway sent the client (TLS,
//! WebSocket and DATA framing included) and the CPU includes the manager's.
//!
//! For every server: frames shown (distinct frame codes the client's window showed), median
//! and p95 latency from a frame drawn (after XSync) to its code first seen in the client's
//! window (the watcher polls only the code's pixels with GetImage; one clock, one machine),
//! bytes the server sent (its socket's `bytes_acked` in `ss -ti`, from the first frame to the
//! end), CPU-seconds of the server process(es) and of the X server it shares, and the PSNR of
//! the client's final picture against the server's screen.
//!
//! The 10 Mbit/s link: a network namespace whose `lo` has mtu 1500 and a `tbf` qdisc
//! (`rate 10mbit burst 64kb latency 200ms`), with the servers, both X servers and the client
//! inside it (root only; deleted on drop, also on failure). Note that xrdp reaches its Xvnc
//! over VNC on TCP 127.0.0.1, which crosses the shaped `lo` as well.
//!
//! Run: `cargo bench -p deskport --bench heavy` (as root for the xrdp and 10 Mbit/s rows).
//! Environment: `HEAVY_BENCH_FRAMES` (default 300) for a quicker check, `HEAVY_BENCH_ROWS`
//! (comma-separated names: deskport, deskport-gateway, deskport-gfx, freerdp-planar,
//! freerdp-avc420, xrdp) and
//! `HEAVY_BENCH_LINKS` (loopback, 10mbit) to run a subset. For comparing two builds of deskport
//! in one run (this machine's speed drifts between runs): `HEAVY_BENCH_DESKPORT_B` names
//! another `deskport` binary, served in the row `deskport-b` (only then), and
//! `HEAVY_BENCH_ROUNDS` (default 1) runs the rows that many times, alternating. Rows whose
//! programs are missing are
//! skipped with a line saying so. Prints `HEAVY|…` lines (the table) and `BENCH|…` lines for
//! `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use deskport_testsupport::servers::{
    command_in, cpu_seconds, freerdp_shadow, process_group, wait_listening, XrdpServer,
    XRDP_PASSWORD,
};
use deskport_testsupport::watch::FrameWatcher;
use deskport_testsupport::workload::{self, SCREEN};
use deskport_testsupport::{framecode, image_util, screenshot, Netns, ProcessGuard, Xvfb};

mod support;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const USER: &str = "bench";
const PASSWORD: &str = "Bench-password-123";
const FPS: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Deskport,
    DeskportGateway,
    DeskportGfx,
    FreerdpPlanar,
    FreerdpAvc420,
    Xrdp,
    /// deskport's row served by the binary `HEAVY_BENCH_DESKPORT_B` names.
    DeskportB,
}

impl Server {
    const ALL: [Server; 7] = [
        Server::Deskport,
        Server::DeskportB,
        Server::DeskportGateway,
        Server::DeskportGfx,
        Server::FreerdpPlanar,
        Server::FreerdpAvc420,
        Server::Xrdp,
    ];

    fn key(self) -> &'static str {
        match self {
            Server::Deskport => "deskport",
            Server::DeskportGateway => "deskport-gateway",
            Server::DeskportGfx => "deskport-gfx",
            Server::FreerdpPlanar => "freerdp-planar",
            Server::FreerdpAvc420 => "freerdp-avc420",
            Server::Xrdp => "xrdp",
            Server::DeskportB => "deskport-b",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Server::Deskport => "deskport (planar)",
            Server::DeskportGateway => "deskport (planar) through its RD Gateway",
            Server::DeskportGfx => "deskport, /gfx offered",
            Server::FreerdpPlanar => "FreeRDP 2.11 shadow, planar",
            Server::FreerdpAvc420 => "FreeRDP 2.11 shadow, /gfx:AVC420",
            Server::Xrdp => "xrdp 0.9 with Xvnc",
            Server::DeskportB => "deskport (planar), build B",
        }
    }

    /// xfreerdp's flags besides address and credentials.
    fn client_flags(self) -> Vec<&'static str> {
        let mut flags = vec!["/network:lan", "/bpp:32"];
        match self {
            Server::DeskportGfx => flags.push("/gfx"),
            Server::FreerdpAvc420 => flags.push("/gfx:AVC420"),
            _ => {}
        }
        flags
    }

    fn programs(self) -> &'static [&'static str] {
        match self {
            Server::Deskport
            | Server::DeskportGateway
            | Server::DeskportGfx
            | Server::DeskportB => &["Xvfb", "xfreerdp", "ss"],
            Server::FreerdpPlanar | Server::FreerdpAvc420 => {
                &["Xvfb", "xfreerdp", "ss", "freerdp-shadow-cli"]
            }
            Server::Xrdp => &[
                "Xvfb",
                "xfreerdp",
                "ss",
                "xrdp",
                "xrdp-sesman",
                "Xvnc",
                "openssl",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Loopback,
    Shaped,
}

impl Link {
    fn key(self) -> &'static str {
        match self {
            Link::Loopback => "loopback",
            Link::Shaped => "10mbit",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    frames: usize,
    median_ms: f64,
    p95_ms: f64,
    bytes: u64,
    cpu_s: f64,
    psnr: f64,
    polls_per_s: f64,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Bytes the server's sockets on `port` have sent and had acknowledged.
fn bytes_sent(port: u16, netns: Option<&Netns>) -> u64 {
    let out = command_in(netns, "ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_acked:"))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// The namespace of the 10 Mbit/s link.
fn shaped_namespace() -> Netns {
    let ns = Netns::new();
    ns.run(&["ip", "link", "set", "lo", "mtu", "1500", "up"]);
    ns.run(&[
        "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "10mbit", "burst", "64kb",
        "latency", "200ms",
    ]);
    ns
}

/// deskport's RDP server (the program `binary`) sharing `display`, on 127.0.0.1:`port`.
fn deskport_server(
    binary: &str,
    dir: &Path,
    display: &str,
    port: u16,
    netns: Option<&Netns>,
) -> ProcessGuard {
    let data = dir.join("deskport");
    support::add_user(&data, USER, PASSWORD);
    let config = dir.join("deskport.toml");
    std::fs::write(&config, "[rdp_server]\nnla_only = false\n").unwrap();
    let process = ProcessGuard::spawn(
        "deskport rdp-server",
        command_in(netns, binary)
            .args(["rdp-server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--display", display, "--data-dir"])
            .arg(&data)
            .env("DESKPORT_CONFIG", &config)
            .env(
                "RUST_LOG",
                std::env::var("HEAVY_BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("deskport.log")).unwrap()),
    )
    .unwrap();
    wait_listening(port, netns, "deskport's server to listen");
    process
}

/// `deskport manager` in front of the server on `port` with an instance for it: the
/// manager's process and port, and a gateway token for the instance.
fn gateway_for(
    dir: &Path,
    port: u16,
    netns: Option<&Netns>,
) -> anyhow::Result<(ProcessGuard, u16, String)> {
    let manager_port = match netns {
        Some(_) => 8443,
        None => deskport_testsupport::free_port(LO),
    };
    let cli_config = dir.join("cli.toml");
    std::fs::write(&cli_config, "")?;
    let manager = ProcessGuard::spawn(
        "deskport manager",
        command_in(netns, env!("CARGO_BIN_EXE_deskport"))
            .args(["manager", "--listen", &format!("127.0.0.1:{manager_port}")])
            .arg("--data-dir")
            .arg(dir.join("manager"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .env("DESKPORT_ADMIN_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("manager.log"))?),
    )?;
    wait_listening(manager_port, netns, "the manager to listen");
    let cli = |args: &[&str], input: Option<&str>| -> anyhow::Result<String> {
        // The CLI's known-hosts file is the bench's own, never the user's.
        let mut child = command_in(netns, env!("CARGO_BIN_EXE_deskport"))
            .args(args)
            .env("DESKPORT_CONFIG", &cli_config)
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = input {
            writeln!(child.stdin.take().unwrap(), "{input}")?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "deskport {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let url = format!("https://127.0.0.1:{manager_port}");
    cli(&["login", &url, "--password-stdin"], Some(PASSWORD))?;
    cli(
        &[
            "instance",
            "create",
            "bench",
            "--address",
            "127.0.0.1",
            "--internal-address",
            &format!("127.0.0.1:{port}"),
        ],
        None,
    )?;
    cli(
        &["instance", "rdp", "bench", "--enable", "--no-nla-only"],
        None,
    )?;
    let minted = cli(&["instance", "rdp-token", "bench", "--ttl", "3600"], None)?;
    let token = minted.lines().last().unwrap_or_default().trim().to_owned();
    Ok((manager, manager_port, token))
}

/// What xfreerdp printed.
fn client_said(dir: &Path) -> String {
    ["xfreerdp.log", "xfreerdp.err"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("")
}

/// Runs one server through the workload; `Err` says why the row has no figures.
fn run_row(server: Server, link: Link, frames: u16) -> anyhow::Result<Row> {
    let dir = deskport_testsupport::data_dir();
    let dir = dir.path();
    let netns = (link == Link::Shaped).then(shaped_namespace);
    let ns = netns.as_ref();
    let mut port = match ns {
        Some(_) => 3389,
        None => deskport_testsupport::free_port(LO),
    };

    // The server side: an Xvfb shared by deskport or the shadow server, or xrdp's session.
    let desktop = (server != Server::Xrdp).then(|| Xvfb::start_in(SCREEN.0, SCREEN.1, ns));
    let mut guards: Vec<ProcessGuard> = Vec::new();
    let mut xrdp: Option<XrdpServer> = None;
    // Through the gateway: its port carries the client's bytes.
    let mut gateway: Option<(u16, String)> = None;
    let (user, password) = match server {
        Server::Deskport | Server::DeskportGfx | Server::DeskportGateway | Server::DeskportB => {
            let display = desktop.as_ref().unwrap().display();
            let binary = match server {
                Server::DeskportB => std::env::var("HEAVY_BENCH_DESKPORT_B")?,
                _ => env!("CARGO_BIN_EXE_deskport").to_owned(),
            };
            guards.push(deskport_server(&binary, dir, display, port, ns));
            if server == Server::DeskportGateway {
                let (manager, manager_port, token) = gateway_for(dir, port, ns)?;
                guards.push(manager);
                gateway = Some((manager_port, token));
            }
            (USER.to_owned(), PASSWORD)
        }
        Server::FreerdpPlanar | Server::FreerdpAvc420 => {
            let display = desktop.as_ref().unwrap().display();
            guards.push(freerdp_shadow(dir, display, port, ns));
            ("anyone".to_owned(), "any")
        }
        Server::Xrdp => {
            let started = XrdpServer::start_in(dir, "#!/bin/sh\nexec sleep 3600\n", ns);
            let user = started.user().to_owned();
            port = started.port();
            xrdp = Some(started);
            (user, XRDP_PASSWORD)
        }
    };
    // The server's processes: xrdp forks one per connection into its process group.
    let server_pids = || -> Vec<u32> {
        match &xrdp {
            Some(x) => process_group(x.xrdp_pid()),
            None => guards.iter().map(ProcessGuard::pid).collect(),
        }
    };

    // The client.
    let client = Xvfb::start_in(SCREEN.0, SCREEN.1, ns);
    let mut args = vec![
        format!("/v:127.0.0.1:{port}"),
        format!("/u:{user}"),
        format!("/p:{password}"),
        "/cert:ignore".to_owned(),
        "/sec:tls".to_owned(),
        format!("/size:{}x{}", SCREEN.0, SCREEN.1),
    ];
    args.extend(server.client_flags().iter().map(|f| (*f).to_owned()));
    if let Some((manager_port, token)) = &gateway {
        args.push(format!("/g:127.0.0.1:{manager_port}"));
        args.push(format!("/gat:{token}"));
        args.push("/gt:http".to_owned());
    }
    let wire_port = gateway.as_ref().map_or(port, |(p, _)| *p);
    let log = dir.join("xfreerdp.log");
    let mut xfreerdp = ProcessGuard::spawn(
        "xfreerdp",
        command_in(ns, "xfreerdp")
            .args(&args)
            .env("DISPLAY", client.display())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("xfreerdp.err")).unwrap()),
    )
    .unwrap();

    // The server's display: known, or the xrdp session's once it runs.
    let (x_display, x_pid) = match (&desktop, &xrdp) {
        (Some(d), _) => (d.display().to_owned(), d.pid()),
        (None, Some(x)) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some((pid, display)) = x.session_x_server() {
                    // Xvnc needs the session's cookie.
                    std::env::set_var("XAUTHORITY", x.xauthority());
                    if screenshot(&display).is_ok() {
                        break (display, pid);
                    }
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no xrdp session came up; xfreerdp said: {}",
                    client_said(dir)
                );
                anyhow::ensure!(
                    xfreerdp.try_wait().is_none(),
                    "xfreerdp left: {}",
                    client_said(dir)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (None, None) => unreachable!(),
    };

    // The workload: this program again, in workload mode.
    let work_log = dir.join("workload.log");
    let mut work = ProcessGuard::spawn(
        "workload",
        command_in(ns, std::env::current_exe()?.to_str().unwrap())
            .arg("--workload")
            .args(["--display", &x_display, "--frames", &frames.to_string()])
            .args(["--fps", &FPS.to_string(), "--log"])
            .arg(&work_log)
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    )?;

    // Connected: the client shows frame 0 with its code, where the remote screen's corner is.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (origin, shot) = loop {
        let shot = client.screenshot();
        if let Some((origin, 0)) = framecode::locate(&shot) {
            break (origin, shot);
        }
        anyhow::ensure!(
            xfreerdp.try_wait().is_none(),
            "xfreerdp left: {}",
            client_said(dir)
        );
        anyhow::ensure!(
            work.try_wait().is_none(),
            "the workload stopped before it started"
        );
        if Instant::now() > deadline {
            let artifacts = deskport_testsupport::artifact_dir("bench-heavy");
            image_util::save_png(&shot, &artifacts.join("no-frame-zero.png"));
            anyhow::bail!(
                "the client never showed frame 0 (screenshot in {}); xfreerdp said: {}",
                artifacts.display(),
                client_said(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let expected = (
        u32::from(framecode::ORIGIN.0),
        u32::from(framecode::ORIGIN.1),
    );
    if origin.0.abs_diff(expected.0) > 1 || origin.1.abs_diff(expected.1) > 1 {
        eprintln!(
            "  note: the remote screen is at an offset in the client's display (code at {origin:?}, \
             expected {expected:?})"
        );
    }
    let offset = (
        origin.0.saturating_sub(expected.0),
        origin.1.saturating_sub(expected.1),
    );
    drop(shot);
    let interval_ms: u64 = std::env::var("HEAVY_BENCH_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let watcher =
        FrameWatcher::start(client.display(), origin, Duration::from_millis(interval_ms))?;

    // Go.
    let pids = |extra: u32| {
        let mut p = server_pids();
        p.push(extra);
        p
    };
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let measured = pids(x_pid);
    let (bytes0, cpu0) = (bytes_sent(wire_port, ns), cpu(&measured));
    writeln!(work.child_mut().stdin.take().unwrap())?;
    let run_time = Duration::from_secs_f64(f64::from(frames) / f64::from(FPS));
    let status = work
        .wait_timeout(run_time + Duration::from_secs(20))
        .ok_or_else(|| anyhow::anyhow!("the workload did not finish in time"))?;
    anyhow::ensure!(status.success(), "the workload failed: {status}");
    // What is still on its way: until the last frame shows, at most 5 s.
    let drain = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain && !watcher.seen().first_seen.contains_key(&frames) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let measured = {
        let mut now = pids(x_pid);
        now.retain(|p| measured.contains(p));
        now
    };
    let (bytes1, cpu1) = (bytes_sent(wire_port, ns), cpu(&measured));
    anyhow::ensure!(
        xfreerdp.try_wait().is_none(),
        "xfreerdp left during the run: {}",
        client_said(dir)
    );
    let seen = watcher.finish()?;
    let theirs = screenshot(&x_display)?;
    let ours = client.screenshot();
    let ours =
        image::imageops::crop_imm(&ours, offset.0, offset.1, SCREEN.0.into(), SCREEN.1.into())
            .to_image();
    let artifacts = deskport_testsupport::artifact_dir("bench-heavy");
    let tag = format!("{}-{}", server.key(), link.key());
    image_util::save_png(&ours, &artifacts.join(format!("{tag}-client.png")));
    image_util::save_png(&theirs, &artifacts.join(format!("{tag}-server.png")));
    drop(xfreerdp);

    let drawn = workload::read_log(&work_log)?;
    let mut latencies: Vec<f64> = drawn
        .iter()
        .filter(|(n, _)| *n >= 1)
        .filter_map(|(n, t)| {
            seen.first_seen
                .get(n)
                .map(|s| s.saturating_sub(*t) as f64 / 1e6)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    drop(work);
    drop(guards);
    drop(xrdp);
    drop(netns);
    Ok(Row {
        frames: latencies.len(),
        median_ms: percentile(&latencies, 50.0),
        p95_ms: percentile(&latencies, 95.0),
        bytes: bytes1.saturating_sub(bytes0),
        cpu_s: cpu1 - cpu0,
        psnr: image_util::psnr(&ours, &theirs),
        polls_per_s: seen.poll_rate(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // X servers inside the shaped link's namespace are reached through their socket files
    // (deskport_testsupport::x_connect), here and in the workload program started from here.
    std::env::set_var(deskport_testsupport::SOCKET_FILE_ONLY, "1");
    if args.get(1).map(String::as_str) == Some("--workload") {
        let options = workload::Options::parse(args.into_iter().skip(2)).unwrap();
        workload::run(&options).unwrap();
        return;
    }
    let frames: u16 = std::env::var("HEAVY_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let wanted = |var: &str, key: &str| {
        std::env::var(var)
            .map(|v| v.split(',').any(|k| k.trim() == key))
            .unwrap_or(true)
    };
    let root = nix::unistd::geteuid().is_root();
    let rounds: usize = std::env::var("HEAVY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let build_b = std::env::var_os("HEAVY_BENCH_DESKPORT_B").is_some();
    let mut results: Vec<(Link, Server, Row)> = Vec::new();
    for link in [Link::Loopback, Link::Shaped] {
        if !wanted("HEAVY_BENCH_LINKS", link.key()) {
            continue;
        }
        if link == Link::Shaped && !(root && on_path("tc") && on_path("ip")) {
            println!("heavy: skipping the 10 Mbit/s rows: they need root, ip and tc");
            continue;
        }
        for server in (0..rounds).flat_map(|_| Server::ALL) {
            if !wanted("HEAVY_BENCH_ROWS", server.key())
                || (server == Server::DeskportB && !build_b)
            {
                continue;
            }
            if let Some(missing) = server.programs().iter().find(|p| !on_path(p)) {
                println!(
                    "heavy: skipping {} ({}): `{missing}` is not installed (scripts/install-deps)",
                    server.label(),
                    link.key()
                );
                continue;
            }
            if server == Server::Xrdp && !root {
                println!(
                    "heavy: skipping xrdp ({}): it needs root (a throwaway account)",
                    link.key()
                );
                continue;
            }
            eprintln!(
                "heavy: {} over {} ({frames} frames)",
                server.label(),
                link.key()
            );
            let started = Instant::now();
            let result = run_row(server, link, frames);
            match result {
                Ok(row) => {
                    eprintln!("  {row:?} in {:.0} s", started.elapsed().as_secs_f64());
                    println!(
                        "HEAVY|{}|{}|{}|{}|{:.1}|{:.1}|{}|{:.2}|{}|{:.0}",
                        link.key(),
                        server.label(),
                        row.frames,
                        frames,
                        row.median_ms,
                        row.p95_ms,
                        row.bytes,
                        row.cpu_s,
                        if row.psnr.is_infinite() {
                            "inf".to_owned()
                        } else {
                            format!("{:.1}", row.psnr)
                        },
                        row.polls_per_s
                    );
                    results.push((link, server, row));
                }
                Err(e) => println!(
                    "heavy: {} ({}) has no figures: {e:#}",
                    server.label(),
                    link.key()
                ),
            }
        }
    }
    // The headline ratios: deskport against the best peer in each figure's sense.
    for link in [Link::Loopback, Link::Shaped] {
        let get = |s: Server| {
            results
                .iter()
                .find(|(l, srv, _)| *l == link && *srv == s)
                .map(|(_, _, r)| r.clone())
        };
        let Some(ours) = get(Server::Deskport) else {
            continue;
        };
        let l = link.key();
        if let Some(gw) = get(Server::DeskportGateway) {
            println!(
                "BENCH|rdp heavy {l}: bytes through the RD Gateway|{:.2}|MB|{:.2}|MB direct|lower",
                gw.bytes as f64 / 1e6,
                ours.bytes as f64 / 1e6
            );
            println!(
                "BENCH|rdp heavy {l}: median latency through the RD Gateway|{:.1}|ms|{:.1}|ms direct|lower",
                gw.median_ms, ours.median_ms
            );
            println!(
                "BENCH|rdp heavy {l}: frames through the RD Gateway|{}|frames|{}|frames direct|higher",
                gw.frames, ours.frames
            );
        }
        if let Some(avc) = get(Server::FreerdpAvc420) {
            println!(
                "BENCH|rdp heavy {l}: frames shown|{}|frames|{}|frames FreeRDP AVC420|higher",
                ours.frames, avc.frames
            );
            println!(
                "BENCH|rdp heavy {l}: median latency|{:.1}|ms|{:.1}|ms FreeRDP AVC420|lower",
                ours.median_ms, avc.median_ms
            );
            println!(
                "BENCH|rdp heavy {l}: p95 latency|{:.1}|ms|{:.1}|ms FreeRDP AVC420|lower",
                ours.p95_ms, avc.p95_ms
            );
            println!(
                "BENCH|rdp heavy {l}: bytes|{:.2}|MB|{:.2}|MB FreeRDP AVC420|lower",
                ours.bytes as f64 / 1e6,
                avc.bytes as f64 / 1e6
            );
        }
        if let Some(planar) = get(Server::FreerdpPlanar) {
            println!(
                "BENCH|rdp heavy {l}: server + X CPU|{:.2}|CPU-s|{:.2}|CPU-s FreeRDP planar|lower",
                ours.cpu_s, planar.cpu_s
            );
        }
        if let Some(x) = get(Server::Xrdp) {
            println!(
                "BENCH|rdp heavy {l}: median latency vs xrdp|{:.1}|ms|{:.1}|ms xrdp + Xvnc|lower",
                ours.median_ms, x.median_ms
            );
        }
    }
}
