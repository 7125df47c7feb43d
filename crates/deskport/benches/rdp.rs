//! deskport's RDP server against FreeRDP's shadow server (`freerdp-shadow-cli`), both sharing
//! the same Xvfb display, with the same client and the same workload, in the same run
//! (issue "RDP server, part 2"; SPEC §7):
//!
//! - connect → first complete frame with `deskport connect --screenshot` (TLS for both; NLA for
//!   deskport only: the shadow server's NLA needs system accounts), median of several runs;
//! - bytes on the wire (server → client, counted by a relay in this process) and CPU time of
//!   the server process and of the X server per second during a fixed 10 s animation
//!   ([`Xvfb::animate_workload`], 30 frames/s) watched by `xfreerdp`, once with plain bitmaps
//!   and once with the graphics pipeline offered (`/gfx`); deskport also against itself with
//!   raw bitmaps, without bulk compression and with whole-screen polling instead of XDamage;
//! - the same with a still screen (target ≈ 0).
//!
//! Run: `cargo bench -p deskport --bench rdp` (env `RDP_BENCH_SECS` sets the measured
//! animation time, default 10). Lines starting with `BENCH|` are read by `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskport_testsupport::{
    free_port, image_util, require_program, wait_until, ProcessGuard, Xvfb,
};

mod support;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const USER: &str = "bench";
const PASSWORD: &str = "Bench-password-123";
const SIZE: (u16, u16) = (1024, 768);

/// A relay in front of a server that counts the bytes the server sends.
struct Relay {
    port: u16,
    down: Arc<AtomicU64>,
}

impl Relay {
    fn start(server: u16) -> Self {
        let listener = TcpListener::bind((LO, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicU64::new(0));
        let counter = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect((LO, server)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || pump(client, upstream, None));
                let counter = counter.clone();
                std::thread::spawn(move || pump(u2, c2, Some(counter)));
            }
        });
        Self { port, down }
    }

    fn bytes(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = &counter {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of proc(5), counted from the state field (3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / hz as f64
}

/// One server under test.
struct Server {
    name: &'static str,
    port: u16,
    process: ProcessGuard,
}

/// deskport's server sharing `desktop`, named `name`, with extra `[rdp_server]` settings.
fn deskport_server(dir: &Path, desktop: &Xvfb, name: &'static str, settings: &str) -> Server {
    let data = dir.join(name);
    support::add_user(&data, USER, PASSWORD);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("[rdp_server]\nnla_only = false\n{settings}"),
    )
    .unwrap();
    let port = free_port(LO);
    let process = ProcessGuard::spawn(
        "deskport rdp-server",
        Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(["rdp-server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--display", desktop.display(), "--data-dir"])
            .arg(&data)
            .env("DESKPORT_CONFIG", &config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()),
    )
    .unwrap();
    listening(port);
    Server {
        name,
        port,
        process,
    }
}

fn shadow_server(dir: &Path, desktop: &Xvfb) -> Server {
    let port = free_port(LO);
    let process = ProcessGuard::spawn(
        "freerdp-shadow-cli",
        desktop
            .command("freerdp-shadow-cli")
            .args([&format!("/port:{port}"), "-auth"])
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("shadow.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("shadow.err")).unwrap()),
    )
    .unwrap();
    listening(port);
    Server {
        name: "freerdp-shadow",
        port,
        process,
    }
}

fn listening(port: u16) {
    wait_until(Duration::from_secs(20), "the server to listen", || {
        TcpStream::connect((LO, port)).ok().map(|_| ())
    });
}

/// Milliseconds from the start of `deskport connect` to its first complete frame.
fn first_frame_ms(dir: &Path, port: u16, sec: &str) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args([
            "connect",
            &format!("127.0.0.1:{port}"),
            "-u",
            USER,
            "-p",
            PASSWORD,
        ])
        .args(["--sec", sec, "-g", &format!("{}x{}", SIZE.0, SIZE.1)])
        .arg("--screenshot")
        .arg(dir.join("first-frame.png"))
        .arg("--known-hosts")
        .arg(dir.join(format!("known_hosts-{port}")))
        .args(["--timeout", "20"])
        .env("DESKPORT_CONFIG", "/dev/null")
        .env("RUST_LOG", "deskport=info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deskport connect failed: {stderr}");
    stderr
        .lines()
        .find(|l| l.contains("First complete frame"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.trim_matches('"').split('"').next())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no timing in: {stderr}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-second figures over a measured interval.
#[derive(Debug, Clone, Copy)]
struct Rates {
    kbytes: f64,
    server_cpu: f64,
    x_cpu: f64,
    /// Screen changes the client showed per second (sampled after the measurement): whole
    /// frames and partly painted ones alike, so it can exceed the animation's 30 frames/s.
    client_fps: f64,
}

struct Meter<'a> {
    relay: &'a Relay,
    server: u32,
    x: u32,
}

impl Meter<'_> {
    fn measure(&self, secs: f64) -> Rates {
        let (b0, s0, x0) = (
            self.relay.bytes(),
            cpu_seconds(self.server),
            cpu_seconds(self.x),
        );
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let elapsed = started.elapsed().as_secs_f64();
        Rates {
            kbytes: (self.relay.bytes() - b0) as f64 / 1000.0 / elapsed,
            server_cpu: (cpu_seconds(self.server) - s0) / elapsed * 100.0,
            x_cpu: (cpu_seconds(self.x) - x0) / elapsed * 100.0,
            client_fps: 0.0,
        }
    }
}

/// How many times per second the client's screen changes, sampled as fast as screenshots go
/// for `secs` (bounded by the screenshot rate: printed alongside).
fn client_fps(client: &Xvfb, secs: f64) -> f64 {
    let started = Instant::now();
    let (mut changes, mut samples) = (0u32, 0u32);
    let mut previous = client.screenshot();
    while started.elapsed().as_secs_f64() < secs {
        let shot = client.screenshot();
        samples += 1;
        if shot != previous {
            changes += 1;
        }
        previous = shot;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "  client: {changes} changes in {samples} samples over {elapsed:.1} s ({:.0} samples/s)",
        f64::from(samples) / elapsed
    );
    f64::from(changes) / elapsed
}

/// xfreerdp watches the desktop through a counting relay: first the animation, then a still
/// screen.
fn workload(
    dir: &Path,
    desktop: &Xvfb,
    client: &Xvfb,
    server: &Server,
    gfx: bool,
) -> (Rates, Rates) {
    let relay = Relay::start(server.port);
    let mut args = vec![
        format!("/v:127.0.0.1:{}", relay.port),
        format!("/u:{USER}"),
        format!("/p:{PASSWORD}"),
        "/cert:ignore".to_owned(),
        "/sec:tls".to_owned(),
        format!("/size:{}x{}", SIZE.0, SIZE.1),
        "/bpp:32".to_owned(),
    ];
    if gfx {
        args.push("/gfx".to_owned());
    } else {
        // A LAN session without the graphics pipeline: plain (planar or raw) bitmaps.
        args.extend(["/network:lan".to_owned(), "-gfx".to_owned()]);
    }
    let log = dir.join(format!("xfreerdp-{}-{gfx}.log", server.name));
    let mut xfreerdp = ProcessGuard::spawn(
        "xfreerdp",
        client
            .command("xfreerdp")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let meter = Meter {
        relay: &relay,
        server: server.process.pid(),
        x: desktop.pid(),
    };
    let secs: f64 = std::env::var("RDP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let animation = desktop.animate_workload(30);
    // Connection, first full frame, and the stream settling.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        xfreerdp.try_wait().is_none() && relay.bytes() > 0,
        "xfreerdp did not stay connected to {}: {}",
        server.name,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut moving = meter.measure(secs);
    moving.client_fps = client_fps(client, 3.0);
    drop(animation);
    std::thread::sleep(Duration::from_secs(2));
    let still = meter.measure(secs / 2.0);
    assert!(
        xfreerdp.try_wait().is_none(),
        "xfreerdp left {} during the measurement",
        server.name
    );
    // The figures count only if the client shows the animation's last frame.
    let (theirs, ours) = (desktop.screenshot(), client.screenshot());
    let artifacts = deskport_testsupport::artifact_dir("bench-rdp");
    let tag = format!("{}-{}", server.name, if gfx { "gfx" } else { "bitmaps" });
    image_util::save_png(&ours, &artifacts.join(format!("{tag}-client.png")));
    image_util::save_png(&theirs, &artifacts.join(format!("{tag}-server.png")));
    let differ = image_util::diff_fraction(&ours, (0, 0), &theirs, (0, 0), theirs.dimensions(), 24);
    eprintln!(
        "{tag}: {:.2}% of the client's pixels differ from the server's display",
        differ * 100.0
    );
    drop(xfreerdp);
    (moving, still)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for program in ["Xvfb", "xfreerdp", "freerdp-shadow-cli"] {
        require_program(program);
    }
    let dir = deskport_testsupport::data_dir();
    let desktop = Xvfb::start(SIZE.0, SIZE.1);
    desktop.draw_test_pattern();
    let client = Xvfb::start(SIZE.0, SIZE.1);
    let servers = [
        deskport_server(dir.path(), &desktop, "deskport", ""),
        shadow_server(dir.path(), &desktop),
        deskport_server(
            dir.path(),
            &desktop,
            "deskport-raw",
            "codec = \"raw\"\nbulk_compression = false\n",
        ),
        deskport_server(
            dir.path(),
            &desktop,
            "deskport-planar",
            "bulk_compression = false\n",
        ),
        deskport_server(
            dir.path(),
            &desktop,
            "deskport-poll",
            "capture = \"poll\"\n",
        ),
        // FreeRDP 2.11's shadow server reads the screen 16 times a second (its x11 subsystem
        // at captureFrameRate 16; planar + XCRUSH like deskport): deskport at the same rate.
        deskport_server(
            dir.path(),
            &desktop,
            "deskport-16fps",
            "frame_interval_ms = 62\n",
        ),
        deskport_server(
            dir.path(),
            &desktop,
            "deskport-no-shm",
            "capture_shm = false\n",
        ),
    ];

    // Connect → first complete frame. The shadow server sends nothing until the screen
    // changes: a small square keeps changing during these runs, for both servers.
    let runs = 7;
    {
        let _corner = desktop.animate_corner();
        let first = |port: u16, sec: &str| {
            first_frame_ms(dir.path(), port, sec); // warm-up (certificate, caches)
            median(
                (0..runs)
                    .map(|_| first_frame_ms(dir.path(), port, sec))
                    .collect(),
            )
        };
        let tls = first(servers[0].port, "tls");
        let nla = first(servers[0].port, "nla");
        let shadow_tls = first(servers[1].port, "tls");
        println!("BENCH|rdp connect → first complete frame, TLS|{tls:.1}|ms|{shadow_tls:.1}|ms freerdp-shadow|lower");
        println!("BENCH|rdp connect → first complete frame, NLA|{nla:.1}|ms|300|ms target|lower");
    }

    for gfx in [false, true] {
        let mode = if gfx { "/gfx offered" } else { "bitmaps" };
        let (ours, ours_still) = workload(dir.path(), &desktop, &client, &servers[0], gfx);
        let (theirs, theirs_still) = workload(dir.path(), &desktop, &client, &servers[1], gfx);
        eprintln!("{mode}: deskport {ours:?} still {ours_still:?}; freerdp-shadow {theirs:?} still {theirs_still:?}");
        if !gfx {
            // The codec choice: the same session uncompressed, and planar without bulk
            // compression.
            let (raw, _) = workload(dir.path(), &desktop, &client, &servers[2], gfx);
            let (planar, _) = workload(dir.path(), &desktop, &client, &servers[3], gfx);
            eprintln!("{mode}: deskport raw {raw:?}; planar only {planar:?}");
            // The same frame rate as the shadow server.
            let (slow, _) = workload(dir.path(), &desktop, &client, &servers[5], gfx);
            eprintln!("{mode}: deskport at 16 frames/s {slow:?}");
            println!(
                "BENCH|rdp animation bytes/s at 16 frames/s (the shadow server's capture rate)|{:.0}|kB/s|{:.0}|kB/s freerdp-shadow|lower",
                slow.kbytes, theirs.kbytes
            );
            println!(
                "BENCH|rdp animation server CPU at 16 frames/s|{:.1}|%|{:.1}|% freerdp-shadow|lower",
                slow.server_cpu, theirs.server_cpu
            );
            println!(
                "BENCH|rdp animation screen changes seen at 16 frames/s|{:.1}|changes/s|{:.1}|changes/s freerdp-shadow|higher",
                slow.client_fps, theirs.client_fps
            );
            // Images through shared memory against through the X socket.
            let (socket, _) = workload(dir.path(), &desktop, &client, &servers[6], gfx);
            eprintln!("{mode}: deskport without MIT-SHM {socket:?}");
            println!(
                "BENCH|rdp animation server CPU, MIT-SHM vs images through the X socket|{:.1}|%|{:.1}|% X socket|lower",
                ours.server_cpu, socket.server_cpu
            );
            println!(
                "BENCH|rdp animation X server CPU, MIT-SHM vs images through the X socket|{:.1}|%|{:.1}|% X socket|lower",
                ours.x_cpu, socket.x_cpu
            );
            // The capture choice: XDamage against reading the whole screen at every check.
            let (poll, poll_still) = workload(dir.path(), &desktop, &client, &servers[4], gfx);
            eprintln!("{mode}: deskport polling {poll:?} still {poll_still:?}");
            println!(
                "BENCH|rdp animation server CPU, XDamage vs whole-screen polling|{:.1}|%|{:.1}|% polling|lower",
                ours.server_cpu, poll.server_cpu
            );
            println!(
                "BENCH|rdp animation X server CPU, XDamage vs whole-screen polling|{:.1}|%|{:.1}|% polling|lower",
                ours.x_cpu, poll.x_cpu
            );
            println!(
                "BENCH|rdp still screen server CPU, XDamage vs whole-screen polling|{:.1}|%|{:.1}|% polling|lower",
                ours_still.server_cpu, poll_still.server_cpu
            );
            println!(
                "BENCH|rdp still screen X server CPU, XDamage vs whole-screen polling|{:.1}|%|{:.1}|% polling|lower",
                ours_still.x_cpu, poll_still.x_cpu
            );
            for (name, other) in [
                ("raw bitmaps", raw),
                ("planar without bulk compression", planar),
            ] {
                println!(
                    "BENCH|rdp animation bytes/s, deskport vs {name}|{:.0}|kB/s|{:.0}|kB/s {name}|lower",
                    ours.kbytes, other.kbytes
                );
                println!(
                    "BENCH|rdp animation server CPU, deskport vs {name}|{:.1}|%|{:.1}|% {name}|lower",
                    ours.server_cpu, other.server_cpu
                );
            }
        }
        println!(
            "BENCH|rdp animation bytes/s, {mode}|{:.0}|kB/s|{:.0}|kB/s freerdp-shadow|lower",
            ours.kbytes, theirs.kbytes
        );
        println!(
            "BENCH|rdp animation screen changes seen by the client, {mode}|{:.1}|changes/s|{:.1}|changes/s freerdp-shadow|higher",
            ours.client_fps, theirs.client_fps
        );
        println!(
            "BENCH|rdp animation bytes per screen change seen, {mode}|{:.2}|kB|{:.2}|kB freerdp-shadow|lower",
            ours.kbytes / ours.client_fps.max(0.1),
            theirs.kbytes / theirs.client_fps.max(0.1)
        );
        println!(
            "BENCH|rdp animation server CPU per screen change seen, {mode}|{:.2}|ms|{:.2}|ms freerdp-shadow|lower",
            ours.server_cpu * 10.0 / ours.client_fps.max(0.1),
            theirs.server_cpu * 10.0 / theirs.client_fps.max(0.1)
        );
        println!(
            "BENCH|rdp animation server CPU, {mode}|{:.1}|%|{:.1}|% freerdp-shadow|lower",
            ours.server_cpu, theirs.server_cpu
        );
        println!(
            "BENCH|rdp animation X server CPU, {mode}|{:.1}|%|{:.1}|% with freerdp-shadow|lower",
            ours.x_cpu, theirs.x_cpu
        );
        println!(
            "BENCH|rdp still screen bytes/s, {mode}|{:.2}|kB/s|{:.2}|kB/s freerdp-shadow|lower",
            ours_still.kbytes, theirs_still.kbytes
        );
        println!(
            "BENCH|rdp still screen server CPU, {mode}|{:.1}|%|{:.1}|% freerdp-shadow|lower",
            ours_still.server_cpu, theirs_still.server_cpu
        );
    }
}
