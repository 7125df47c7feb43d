//! The headline RDP benchmark (SPEC §7, issue 14): the heavy workload
//! (`deskport_testsupport::workload`: 1280x800, about 40% of the screen changing per frame,
//! 30 frames/s for 10 s, a frame code in every frame) served by deskport, by FreeRDP's shadow
//! server (planar, and `/gfx:AVC420`) and by xrdp 0.9 with an Xvnc session, each watched by
//! the same xfreerdp 2.11 on its own Xvfb; on loopback and through a 10 Mbit/s link.
//!
//! deskport is also measured in a browser tab (issue 17, `deskport-browser`, loopback only): the
//! same server reporting to a manager whose console relays the desktop over a WebSocket to a
//! headless chromium; frames are those the page painted (the code read back from the canvas
//! after each frame, timed with the page's clock converted to CLOCK_MONOTONIC), bytes those
//! the manager sent the browser (TLS included), CPU the manager's, server's and X server's.
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
//! (comma-separated names: deskport, deskport-gateway, deskport-browser, deskport-gfx, freerdp-planar,
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
    /// deskport's server watched in a chromium tab: the console's relay in the manager.
    DeskportBrowser,
}

impl Server {
    const ALL: [Server; 8] = [
        Server::Deskport,
        Server::DeskportB,
        Server::DeskportGateway,
        Server::DeskportBrowser,
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
            Server::DeskportBrowser => "deskport-browser",
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
            Server::DeskportBrowser => "deskport in a chromium tab (console relay)",
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
            Server::DeskportBrowser => &["Xvfb", "ss", "chromium", "chromedriver"],
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
    extra: &[&str],
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
            .args(extra)
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

/// `deskport manager` (HTTPS, its own certificate) in front of the server on `port`, with an
/// instance `bench` for it: remote connections on, NLA not required, gateway access on.
struct ManagerSide {
    process: ProcessGuard,
    port: u16,
    /// A gateway token for the instance (an hour).
    gateway_token: String,
    /// The instance's agent token (`rdp-server --token`).
    agent_token: String,
    instance_id: String,
    /// `SHA256:…` of the manager's certificate.
    fingerprint: String,
    cli_config: std::path::PathBuf,
}

fn manager_for(dir: &Path, port: u16, netns: Option<&Netns>) -> anyhow::Result<ManagerSide> {
    let manager_port = match netns {
        Some(_) => 8443,
        None => deskport_testsupport::free_port(LO),
    };
    let cli_config = dir.join("cli.toml");
    std::fs::write(&cli_config, "")?;
    let out = dir.join("manager.out");
    let manager = ProcessGuard::spawn(
        "deskport manager",
        command_in(netns, env!("CARGO_BIN_EXE_deskport"))
            .args(["manager", "--listen", &format!("127.0.0.1:{manager_port}")])
            .arg("--data-dir")
            .arg(dir.join("manager"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .env("DESKPORT_ADMIN_PASSWORD", PASSWORD)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(dir.join("manager.log"))?),
    )?;
    wait_listening(manager_port, netns, "the manager to listen");
    let fingerprint = std::fs::read_to_string(&out)?
        .split("certificate: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("the manager printed no certificate fingerprint"))?
        .to_owned();
    let cli = |args: &[&str], input: Option<&str>| cli_in(dir, &cli_config, netns, args, input);
    let url = format!("https://127.0.0.1:{manager_port}");
    cli(&["login", &url, "--password-stdin"], Some(PASSWORD))?;
    let created: serde_json::Value = serde_json::from_str(&cli(
        &[
            "instance",
            "create",
            "bench",
            "--address",
            "127.0.0.1",
            "--internal-address",
            &format!("127.0.0.1:{port}"),
            "--json",
        ],
        None,
    )?)?;
    cli(
        &[
            "instance",
            "rdp",
            "bench",
            "--enable",
            "--no-nla-only",
            "--gateway",
        ],
        None,
    )?;
    let minted = cli(&["instance", "rdp-token", "bench", "--ttl", "3600"], None)?;
    Ok(ManagerSide {
        process: manager,
        port: manager_port,
        gateway_token: minted.lines().last().unwrap_or_default().trim().to_owned(),
        agent_token: created["agent_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        instance_id: created["instance"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        fingerprint,
        cli_config,
    })
}

/// The deskport CLI with the bench's own config and known-hosts file (never the user's);
/// its stdout.
fn cli_in(
    dir: &Path,
    cli_config: &Path,
    netns: Option<&Netns>,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    let mut child = command_in(netns, env!("CARGO_BIN_EXE_deskport"))
        .args(args)
        .env("DESKPORT_CONFIG", cli_config)
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
}

/// What xfreerdp printed.
fn client_said(dir: &Path) -> String {
    ["xfreerdp.log", "xfreerdp.err"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("")
}

/// The workload (this program again, in workload mode) on `display`, waiting for a line on
/// its stdin to start.
fn start_workload(
    ns: Option<&Netns>,
    display: &str,
    frames: u16,
    log: &Path,
) -> anyhow::Result<ProcessGuard> {
    Ok(ProcessGuard::spawn(
        "workload",
        command_in(ns, std::env::current_exe()?.to_str().unwrap())
            .arg("--workload")
            .args(["--display", display, "--frames", &frames.to_string()])
            .args(["--fps", &FPS.to_string(), "--log"])
            .arg(log)
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    )?)
}

/// Starts the workload (a line on its stdin) and waits until it drew its `frames` frames.
fn run_workload(work: &mut ProcessGuard, frames: u16) -> anyhow::Result<()> {
    writeln!(work.child_mut().stdin.take().unwrap())?;
    let run_time = Duration::from_secs_f64(f64::from(frames) / f64::from(FPS));
    let status = work
        .wait_timeout(run_time + Duration::from_secs(20))
        .ok_or_else(|| anyhow::anyhow!("the workload did not finish in time"))?;
    anyhow::ensure!(status.success(), "the workload failed: {status}");
    Ok(())
}

/// Each frame's latency (ms, sorted) from drawn (the workload's log) to first seen (frame →
/// CLOCK_MONOTONIC ns), for the frames seen.
fn latencies(
    work_log: &Path,
    first_seen: &std::collections::HashMap<u16, u64>,
) -> anyhow::Result<Vec<f64>> {
    let drawn = workload::read_log(work_log)?;
    let mut latencies: Vec<f64> = drawn
        .iter()
        .filter(|(n, _)| *n >= 1)
        .filter_map(|(n, t)| first_seen.get(n).map(|s| s.saturating_sub(*t) as f64 / 1e6))
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// What the page runs to time frames: after each frame it paints, the frame code's cells are
/// read back from the canvas (the middle of each cell, one row) and every new code is kept
/// with the time (`performance.timeOrigin + now()`, Unix ms).
const PAGE_WATCHER: &str = "
    const [x0, y, cell, cells] = arguments;
    const canvas = document.getElementById('desktop-canvas');
    const ctx = canvas.getContext('2d');
    window.__codes = [];
    window.__paints = [];
    let last = '';
    window.addEventListener('deskport-frame', (e) => {
      window.__paints.push([e.detail.bytes, e.detail.ms]);
      const at = performance.timeOrigin + performance.now();
      const row = ctx.getImageData(x0, y, cell * cells, 1).data;
      let bits = '';
      for (let i = 0; i < cells; i++) {
        const o = (i * cell + cell / 2) * 4;
        bits += (2 * row[o] + 5 * row[o + 1] + row[o + 2]) / 8 >= 128 ? '1' : '0';
      }
      if (bits !== last) { last = bits; window.__codes.push([bits, at]); }
    });";

/// The heavy workload watched in a chromium tab: deskport's server reports to a manager
/// (HTTPS), whose console relays the desktop to the page over a WebSocket. Frames are those
/// the page painted (their codes read back from the canvas), bytes those the manager sent the
/// browser, CPU the manager's, the server's and the X server's. Loopback only: the browser is
/// driven from this process, outside any namespace.
fn run_browser_row(frames: u16) -> anyhow::Result<(Row, f64)> {
    let dir = deskport_testsupport::data_dir();
    let dir = dir.path();
    let port = deskport_testsupport::free_port(LO);
    let desktop = Xvfb::start(SCREEN.0, SCREEN.1);
    let m = manager_for(dir, port, None)?;
    let url = format!("https://127.0.0.1:{}", m.port);
    let server = deskport_server(
        env!("CARGO_BIN_EXE_deskport"),
        dir,
        desktop.display(),
        port,
        None,
        &[
            "--manager",
            &url,
            "--token",
            &m.agent_token,
            "--manager-fingerprint",
            &m.fingerprint,
        ],
    );
    // The console pins the certificate the server reports.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = cli_in(
            dir,
            &m.cli_config,
            None,
            &["instance", "show", "bench", "--json"],
            None,
        )?;
        let shown: serde_json::Value = serde_json::from_str(&shown)?;
        if shown["instance"]["cert_fingerprint"].is_string() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server never reported its certificate"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let work_log = dir.join("workload.log");
    let mut work = start_workload(None, desktop.display(), frames, &work_log)?;
    let pids = [m.process.pid(), server.pid(), desktop.pid()];
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (codes, canvas) = runtime.block_on(async {
        let (c, _driver) = deskport_testsupport::browser::chromium(
            SCREEN.0 as u32 + 40,
            SCREEN.1 as u32 + 200,
            &["--ignore-certificate-errors"],
        )
        .await?;
        let result = async {
            use fantoccini::Locator;
            c.goto(&format!("{url}/login")).await?;
            c.find(Locator::Id("username")).await?.send_keys("admin").await?;
            c.find(Locator::Id("password")).await?.send_keys(PASSWORD).await?;
            c.find(Locator::Css("form button[type=submit]")).await?.click().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.goto(&format!("{url}/instances/{}/console?view=only", m.instance_id))
                .await?;
            let user = c.find(Locator::Id("desktop-user")).await?;
            user.clear().await?;
            user.send_keys(USER).await?;
            c.find(Locator::Id("desktop-password")).await?.send_keys(PASSWORD).await?;
            c.find(Locator::Id("desktop-connect")).await?.click().await?;
            let args = vec![
                serde_json::json!(framecode::ORIGIN.0),
                serde_json::json!(framecode::ORIGIN.1 + framecode::CELL / 2),
                serde_json::json!(framecode::CELL),
                serde_json::json!(framecode::CELLS),
            ];
            // Connected once the canvas shows frame 0's code.
            let deadline = Instant::now() + Duration::from_secs(45);
            loop {
                let state = c
                    .execute("return document.getElementById('desktop').dataset.state", vec![])
                    .await?;
                if state == "connected" {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the console never connected ({state})");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.execute(PAGE_WATCHER, args).await?;
            // Any repaint now records the code shown (frame 0's).
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.execute("return window.__codes.length", vec![]).await? == 0 {
                anyhow::ensure!(Instant::now() < deadline, "the page painted nothing");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        result?;
        let (bytes0, cpu0, manager0) = (
            support::bytes_sent(m.port, None),
            cpu(&pids),
            cpu_seconds(m.process.pid()),
        );
        let realtime_minus_monotonic = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as i128
            - i128::from(workload::monotonic_ns());
        run_workload(&mut work, frames)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (bytes1, cpu1, manager1) = (
            support::bytes_sent(m.port, None),
            cpu(&pids),
            cpu_seconds(m.process.pid()),
        );
        let codes = c.execute("return window.__codes", vec![]).await?;
        let paints = c.execute("return window.__paints", vec![]).await?;
        let paints: Vec<(f64, f64)> = paints
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p[0].as_f64().unwrap_or_default(), p[1].as_f64().unwrap_or_default()))
            .collect();
        let mut ms: Vec<f64> = paints.iter().map(|p| p.1).collect();
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "  the page: {} frames painted, {:.0} bytes a frame, arrival to painted median {:.1} ms, p95 {:.1} ms",
            paints.len(),
            paints.iter().map(|p| p.0).sum::<f64>() / paints.len().max(1) as f64,
            percentile(&ms, 50.0),
            percentile(&ms, 95.0)
        );
        let canvas = deskport_testsupport::browser::canvas_image(&c, "desktop-canvas").await?;
        let _ = c.close().await;
        let mut first_seen = std::collections::HashMap::new();
        for entry in codes.as_array().into_iter().flatten() {
            let bits: Vec<bool> = entry[0].as_str().unwrap_or_default().chars().map(|b| b == '1').collect();
            let at_ms = entry[1].as_f64().unwrap_or_default();
            if let Some(n) = framecode::decode(&bits) {
                let monotonic = (at_ms * 1e6) as i128 - realtime_minus_monotonic;
                first_seen.entry(n).or_insert(monotonic.max(0) as u64);
            }
        }
        Ok::<_, anyhow::Error>((
            (first_seen, bytes1.saturating_sub(bytes0), cpu1 - cpu0, manager1 - manager0),
            canvas,
        ))
    })?;
    let (first_seen, bytes, cpu_s, manager_cpu) = codes;
    let theirs = screenshot(desktop.display())?;
    let artifacts = deskport_testsupport::artifact_dir("bench-heavy");
    image_util::save_png(
        &canvas,
        &artifacts.join("deskport-browser-loopback-client.png"),
    );
    image_util::save_png(
        &theirs,
        &artifacts.join("deskport-browser-loopback-server.png"),
    );
    let latencies = latencies(&work_log, &first_seen)?;
    drop(server);
    drop(m.process);
    let _ = std::fs::copy(
        dir.join("manager.log"),
        artifacts.join("deskport-browser-manager.log"),
    );
    Ok((
        Row {
            frames: latencies.len(),
            median_ms: percentile(&latencies, 50.0),
            p95_ms: percentile(&latencies, 95.0),
            bytes,
            cpu_s,
            psnr: if canvas.dimensions() == theirs.dimensions() {
                image_util::psnr(&canvas, &theirs)
            } else {
                0.0
            },
            polls_per_s: 0.0,
        },
        manager_cpu,
    ))
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
        Server::DeskportBrowser => unreachable!("run_browser_row"),
        Server::Deskport | Server::DeskportGfx | Server::DeskportGateway | Server::DeskportB => {
            let display = desktop.as_ref().unwrap().display();
            let binary = match server {
                Server::DeskportB => std::env::var("HEAVY_BENCH_DESKPORT_B")?,
                _ => env!("CARGO_BIN_EXE_deskport").to_owned(),
            };
            guards.push(deskport_server(&binary, dir, display, port, ns, &[]));
            if server == Server::DeskportGateway {
                let m = manager_for(dir, port, ns)?;
                guards.push(m.process);
                gateway = Some((m.port, m.gateway_token));
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

    let work_log = dir.join("workload.log");
    let mut work = start_workload(ns, &x_display, frames, &work_log)?;

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
    let (bytes0, cpu0) = (support::bytes_sent(wire_port, ns), cpu(&measured));
    run_workload(&mut work, frames)?;
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
    let (bytes1, cpu1) = (support::bytes_sent(wire_port, ns), cpu(&measured));
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

    let latencies = latencies(&work_log, &seen.first_seen)?;
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
    // The manager's CPU in the browser row (the relay's cost).
    let mut relay_cpu: Option<f64> = None;
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
            if server == Server::DeskportBrowser && link != Link::Loopback {
                println!(
                    "heavy: skipping {} ({}): the browser is driven from outside the link's namespace",
                    server.label(),
                    link.key()
                );
                continue;
            }
            let started = Instant::now();
            let result = if server == Server::DeskportBrowser {
                run_browser_row(frames).map(|(row, manager_cpu)| {
                    eprintln!("  the manager's share of the CPU: {manager_cpu:.2} CPU-s");
                    relay_cpu = Some(manager_cpu);
                    row
                })
            } else {
                run_row(server, link, frames)
            };
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
        if let Some(web) = get(Server::DeskportBrowser) {
            println!(
                "BENCH|rdp heavy {l}: frames painted in the browser|{}|frames|{}|frames xfreerdp direct|higher",
                web.frames, ours.frames
            );
            println!(
                "BENCH|rdp heavy {l}: median latency in the browser|{:.1}|ms|{:.1}|ms xfreerdp direct|lower",
                web.median_ms, ours.median_ms
            );
            println!(
                "BENCH|rdp heavy {l}: bytes to the browser|{:.2}|MB|{:.2}|MB xfreerdp direct|lower",
                web.bytes as f64 / 1e6,
                ours.bytes as f64 / 1e6
            );
            if let Some(relay) = relay_cpu {
                println!(
                    "BENCH|rdp heavy {l}: the relay's CPU (manager)|{relay:.2}|CPU-s|{:.2}|CPU-s server + X direct|lower",
                    ours.cpu_s
                );
            }
        }
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
