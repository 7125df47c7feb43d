//! The userspace gateway against its peers (SPEC §7, issue 19): the same bulk TCP transfer
//! through deskport's gateway, HAProxy (TCP mode, splice) and socat, and directly, with the
//! proxy pinned to core 0 and the client and the sink to core 1 (`taskset`; the bench pins
//! itself with `sched_setaffinity`). Targets: throughput >= 1.0x HAProxy's and >= 1.5x socat's, CPU per GB <=
//! HAProxy's, <= 1 ms added to connection setup.
//!
//! Run: `cargo bench -p deskport-firewall --bench gateway` (or `scripts/bench gateway`, which
//! puts the figures into bench/RESULTS.md). Needs `haproxy` and `socat` (scripts/install-deps
//! installs them); a peer that is missing is left out and said so. Env: `GATEWAY_BENCH_MB`
//! (per run, default 1024), `GATEWAY_BENCH_ROUNDS` (default 5), `GATEWAY_BENCH_PIPE_KIB`
//! (deskport's pipe size instead of the default 64 KiB, to explore; 256 and 1024 KiB gave
//! the same figures within the noise).
//!
//! Each proxy runs as its own process on its defaults as an operator would start it:
//! deskport's gateway is this bench re-executed as a child with the `GatewayConfig` that
//! `deskport firewall --backend gateway` uses on the runtime it uses (multi-threaded, as many
//! workers as cores it may run on: one); HAProxy 2.6 with `nbthread 1` and
//! `option splice-request`/`splice-response` (default pipe size); socat with `fork`
//! (default 8 KiB buffer). The rounds alternate the proxies so drift affects all alike.
//! Throughput: the median of the rounds. CPU per GB: the proxy's user + system time over all
//! rounds (its reaped children's included, for socat's forks) divided by the bytes moved.
//! Lines starting with `BENCH|` and `GATEWAY|` are read by `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deskport_api::PolicyDocument;
use deskport_firewall::{Gateway, GatewayConfig};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The child process that serves deskport's gateway: `PUBLIC:INTERNAL,PUBLIC:INTERNAL`.
const SERVE_ENV: &str = "GATEWAY_BENCH_SERVE";

/// A server that, per connection, reads until EOF and answers with one byte; or, for the
/// connection-setup test, echoes each byte.
fn server(echo: bool) -> u16 {
    let listener = TcpListener::bind((LO, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
                let _ = s.write_all(b"k");
            });
        }
    });
    port
}

/// Sends `bytes` in all to `port` over `streams` connections at once and waits for the sink's
/// acknowledgement of each; returns MB/s.
fn bulk(port: u16, bytes: usize, streams: usize) -> f64 {
    let started = Instant::now();
    let each = bytes / streams;
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 256 * 1024];
                let mut s = TcpStream::connect((LO, port)).unwrap();
                let mut left = each;
                while left > 0 {
                    let n = left.min(chunk.len());
                    s.write_all(&chunk[..n]).unwrap();
                    left -= n;
                }
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut ack = [0u8; 1];
                s.read_exact(&mut ack).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (each * streams) as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// Connect, send one byte, read the echo, close; returns the time of each of `n` rounds.
fn setup_latencies(port: u16, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let mut s = TcpStream::connect((LO, port)).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            let took = started.elapsed();
            drop(s);
            took
        })
        .collect()
}

fn median_duration(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Pins the calling thread (and the threads and processes it starts later) to `cpu`.
fn pin(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// User + system CPU seconds of `pid` and of its children it has reaped.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14-17, i.e. indices 11-14 after the state.
    let ticks: f64 = fields
        .iter()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// Waits until `pid` has no children left (socat's forks exit after the transfer and are
/// reaped, so their CPU time lands in the parent's).
fn wait_childless(pid: u32) {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            Ok(children) if children.trim().is_empty() => return,
            Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One way to reach the sink (and the echo server).
struct Route {
    name: &'static str,
    bulk_port: u16,
    echo_port: u16,
    processes: Vec<Child>,
}

impl Route {
    fn cpu(&self) -> f64 {
        self.processes
            .iter()
            .map(|p| {
                wait_childless(p.id());
                cpu_seconds(p.id())
            })
            .sum()
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn wait_listening(port: u16, what: &str, process: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((LO, port)).is_err() {
        assert!(
            process.try_wait().unwrap().is_none(),
            "{what} exited before listening on {port}"
        );
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn start_deskport(cpu: Option<usize>, sink: u16, echo: u16) -> Route {
    let (bulk_port, echo_port) = (
        deskport_testsupport::free_port(LO),
        deskport_testsupport::free_port(LO),
    );
    let mut command = command_on(cpu, std::env::current_exe().unwrap());
    command
        .env(SERVE_ENV, format!("{bulk_port}:{sink},{echo_port}:{echo}"))
        .stdout(Stdio::null());
    let mut child = command.spawn().unwrap();
    wait_listening(bulk_port, "deskport's gateway", &mut child);
    wait_listening(echo_port, "deskport's gateway", &mut child);
    Route {
        name: "deskport gateway",
        bulk_port,
        echo_port,
        processes: vec![child],
    }
}

fn start_haproxy(cpu: Option<usize>, dir: &Path, sink: u16, echo: u16) -> Route {
    let (bulk_port, echo_port) = (
        deskport_testsupport::free_port(LO),
        deskport_testsupport::free_port(LO),
    );
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    nbthread 1\n    maxconn 4096\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             \x20   option splice-request\n    option splice-response\n\
             listen bulk\n    bind 127.0.0.1:{bulk_port}\n    server sink 127.0.0.1:{sink}\n\
             listen echo\n    bind 127.0.0.1:{echo_port}\n    server echo 127.0.0.1:{echo}\n"
        ),
    )
    .unwrap();
    let mut command = command_on(cpu, "haproxy");
    command
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null());
    let mut child = command.spawn().unwrap();
    wait_listening(bulk_port, "haproxy", &mut child);
    wait_listening(echo_port, "haproxy", &mut child);
    Route {
        name: "HAProxy (TCP, splice)",
        bulk_port,
        echo_port,
        processes: vec![child],
    }
}

fn start_socat(cpu: Option<usize>, sink: u16, echo: u16) -> Route {
    let mut processes = Vec::new();
    let mut ports = Vec::new();
    for target in [sink, echo] {
        let port = deskport_testsupport::free_port(LO);
        let mut command = command_on(cpu, "socat");
        command
            .arg(format!(
                "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024"
            ))
            .arg(format!("TCP:127.0.0.1:{target}"))
            .stdout(Stdio::null());
        let mut child = command.spawn().unwrap();
        wait_listening(port, "socat", &mut child);
        processes.push(child);
        ports.push(port);
    }
    Route {
        name: "socat",
        bulk_port: ports[0],
        echo_port: ports[1],
        processes,
    }
}

/// A command for `program`, pinned to `cpu` through `taskset` (which execs it: the process
/// is the program's).
fn command_on(cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", &cpu.to_string()]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The child: deskport's gateway publishing `spec`, until killed.
fn serve(spec: &str) -> ! {
    let services: Vec<(u16, u16)> = spec
        .split(',')
        .map(|pair| {
            let (p, i) = pair.split_once(':').unwrap();
            (p.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    // As `deskport firewall` runs: the default multi-threaded runtime (one worker per core the
    // process may use) and the gateway's default configuration.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = GatewayConfig::default();
    if let Some(kib) = std::env::var("GATEWAY_BENCH_PIPE_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.buffer_size = kib * 1024;
    }
    let gw = Gateway::new(config);
    let list: Vec<String> = services
        .iter()
        .map(|(p, i)| format!("{{ public_port = {p}, internal_port = {i} }}"))
        .collect();
    let text = format!(
        r#"
[[security_groups]]
name = "default"
rules = [ {{ protocol = "tcp", remote_ip_prefix = "127.0.0.0/8" }} ]
[[instances]]
name = "bench"
addresses = ["127.0.0.1"]
security_groups = ["default"]
services = [{}]
"#,
        list.join(", ")
    );
    let policy = PolicyDocument::from_toml(&text)
        .unwrap()
        .to_policy()
        .unwrap();
    let report = rt.block_on(gw.apply(&policy, 1));
    assert!(report.bind_errors.is_empty(), "{report:?}");
    // The runtime's workers serve; this thread waits until the bench kills the process.
    loop {
        std::thread::park();
    }
}

struct Figures {
    name: &'static str,
    mbps: f64,
    cpu_per_gb: Option<f64>,
}

fn main() {
    if let Ok(spec) = std::env::var(SERVE_ENV) {
        serve(&spec);
    }
    // `cargo bench` passes `--bench`; a filter argument that does not match skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"gateway".contains(&a))
    {
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mb = env("GATEWAY_BENCH_MB", 1024);
    let rounds = env("GATEWAY_BENCH_ROUNDS", 5).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The proxy on core 0; this process (client and sink threads) on core 1.
    let proxy_cpu = (cores >= 2 && pin(1)).then_some(0);
    match proxy_cpu {
        Some(_) => println!("pinned: the proxy on core 0, client and sink on core 1"),
        None => {
            println!("NOT pinned ({cores} core(s)): the figures are not comparable to the targets")
        }
    }
    let dir = deskport_testsupport::data_dir();
    let sink = server(false);
    let echo = server(true);

    let mut paths = vec![
        Route {
            name: "direct",
            bulk_port: sink,
            echo_port: echo,
            processes: Vec::new(),
        },
        start_deskport(proxy_cpu, sink, echo),
    ];
    if have("haproxy") {
        paths.push(start_haproxy(proxy_cpu, dir.path(), sink, echo));
    } else {
        println!("haproxy is not installed: its rows are left out");
    }
    if have("socat") {
        paths.push(start_socat(proxy_cpu, sink, echo));
    } else {
        println!("socat is not installed: its rows are left out");
    }

    let mut all: Vec<(usize, Vec<Figures>)> = Vec::new();
    for streams in [1usize, 8] {
        for p in &paths {
            bulk(p.bulk_port, 64 << 20, streams);
        }
        let mut mbps = vec![Vec::new(); paths.len()];
        let mut cpu = vec![0.0f64; paths.len()];
        for _ in 0..rounds {
            for (i, p) in paths.iter().enumerate() {
                let before = p.cpu();
                mbps[i].push(bulk(p.bulk_port, mb << 20, streams));
                cpu[i] += p.cpu() - before;
            }
        }
        let gb = (rounds * (mb << 20)) as f64 / 1e9;
        let figures: Vec<Figures> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Figures {
                name: p.name,
                mbps: median(std::mem::take(&mut mbps[i])),
                cpu_per_gb: (!p.processes.is_empty()).then_some(cpu[i] / gb),
            })
            .collect();
        println!("bulk TCP transfer, {streams} stream(s), {mb} MiB per run, median of {rounds}:");
        for f in &figures {
            let cpu = f
                .cpu_per_gb
                .map_or("-".to_owned(), |c| format!("{c:.3} CPU-s/GB"));
            println!("  {:<24} {:>7.0} MB/s  {cpu}", f.name, f.mbps);
            println!(
                "GATEWAY|bulk|{streams}|{}|{:.0}|{}",
                f.name,
                f.mbps,
                f.cpu_per_gb.map_or("-".to_owned(), |c| format!("{c:.3}"))
            );
        }
        all.push((streams, figures));
    }

    let mut setup = Vec::new();
    for p in &paths {
        setup_latencies(p.echo_port, 200);
    }
    let mut samples = vec![Vec::new(); paths.len()];
    for _ in 0..4 {
        for (i, p) in paths.iter().enumerate() {
            samples[i].extend(setup_latencies(p.echo_port, 250));
        }
    }
    println!("connection setup (connect + 1-byte echo), median of 1000:");
    for (i, p) in paths.iter().enumerate() {
        let m = median_duration(std::mem::take(&mut samples[i]));
        println!("  {:<24} {:>7.0} µs", p.name, m.as_secs_f64() * 1e6);
        println!("GATEWAY|setup|-|{}|{:.0}|-", p.name, m.as_secs_f64() * 1e6);
        setup.push((p.name, m.as_secs_f64() * 1e6));
    }

    let find = |figures: &[Figures], name: &str| {
        figures
            .iter()
            .find(|f| f.name.starts_with(name))
            .map(|f| (f.mbps, f.cpu_per_gb))
    };
    for (streams, figures) in &all {
        let label = if *streams == 1 {
            "1 stream".to_owned()
        } else {
            format!("{streams} streams")
        };
        let (ours, our_cpu) = find(figures, "deskport").unwrap();
        if let Some((theirs, their_cpu)) = find(figures, "HAProxy") {
            println!("BENCH|gateway bulk throughput, {label}|{ours:.0}|MB/s|{theirs:.0}|MB/s HAProxy (TCP, splice)|higher");
            if let (Some(o), Some(t)) = (our_cpu, their_cpu) {
                println!("BENCH|gateway CPU per GB, {label}|{o:.3}|CPU-s/GB|{t:.3}|CPU-s/GB HAProxy|lower");
            }
        }
        if let Some((theirs, _)) = find(figures, "socat") {
            println!("BENCH|gateway bulk throughput vs socat, {label}|{ours:.0}|MB/s|{theirs:.0}|MB/s socat|higher");
        }
        if let Some((direct, _)) = find(figures, "direct") {
            println!("BENCH|gateway bulk throughput vs direct, {label}|{ours:.0}|MB/s|{direct:.0}|MB/s direct loopback|higher");
        }
    }
    let get = |name: &str| {
        setup
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .map(|(_, v)| *v)
    };
    if let (Some(ours), Some(direct)) = (get("deskport"), get("direct")) {
        println!(
            "added to connection setup: {:.0} µs (target <= 1000 µs)",
            ours - direct
        );
        println!("BENCH|gateway connection setup (median)|{ours:.0}|µs|{direct:.0}|µs direct loopback|lower");
        if let Some(h) = get("HAProxy") {
            println!("BENCH|gateway connection setup vs HAProxy (median)|{ours:.0}|µs|{h:.0}|µs HAProxy|lower");
        }
    }
}
