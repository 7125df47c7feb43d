//! The soak (issue 20): deskport's RDP server with virtual desktops under a long, mixed load,
//! watched for leaks.
//!
//! - `SOAK_SESSIONS` (default 20) accounts, each with its own virtual desktop (Xvnc) running
//!   the heavy workload of SPEC §7 (`deskport_testsupport::workload`, at `SOAK_FPS` frames a
//!   second, default 5: the 2-core machines cannot draw 20 desktops at 30), each watched by
//!   its own real xfreerdp for `SOAK_MINUTES` (default 10);
//! - meanwhile, `SOAK_CYCLES` (default 1,000) connect/disconnect cycles by two more accounts
//!   (`cycler1`, `cycler2`, whose desktops stay still) at once: `deskport connect
//!   --screenshot` (the full sequence, NLA, its session reattached, a complete screen, then
//!   gone);
//! - every `SOAK_SAMPLE_SECS` (default 30) the server's resident memory, open descriptors and
//!   threads, the X servers running and the clients still alive;
//! - at the end the clients leave; once the sessions' timeout has passed, no X server and no
//!   session process may be left, and the descriptors must be back where they started.
//!
//! Prints `SOAK|…` lines (the curve, the summary) that `scripts/soak` turns into a section of
//! `bench/RESULTS.md`. Exits non-zero when a session died, a cycle failed or something leaked.
//! Run as root (the sessions run as `nobody`): `scripts/soak`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskport_testsupport::servers::wait_listening;
use deskport_testsupport::workload::{self, SCREEN};
use deskport_testsupport::{ProcessGuard, Xvfb};

mod support;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PASSWORD: &str = "Soak-password-123";
/// Seconds a session lives on without a client (short, so the leak check comes soon).
const SESSION_TIMEOUT: u64 = 15;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kb: u64,
    fds: usize,
    threads: u64,
    x_servers: usize,
    clients: usize,
    cycles: u32,
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The processes whose command is `name`, and those whose parent is `parent`, anywhere below
/// it (the sessions' programs).
fn processes() -> Vec<(u32, u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat[open + 1..close].to_owned();
            let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let all = processes();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &all {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

fn sample(server: u32, started: Instant, clients: &mut [ProcessGuard], cycles: u32) -> Sample {
    let below = descendants(server);
    Sample {
        at_s: started.elapsed().as_secs(),
        rss_kb: status_field(server, "VmRSS:"),
        fds: fds(server),
        threads: status_field(server, "Threads:"),
        x_servers: below.iter().filter(|(_, c)| c.starts_with("Xvnc")).count(),
        clients: clients
            .iter_mut()
            .filter_map(|c| c.try_wait().is_none().then_some(()))
            .count(),
        cycles,
    }
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
    if !nix::unistd::geteuid().is_root() {
        println!("soak: skipped: it needs root (the sessions run as `nobody`)");
        return;
    }
    let sessions: usize = env_or("SOAK_SESSIONS", 20);
    let minutes: u64 = env_or("SOAK_MINUTES", 10);
    let cycles_wanted: u32 = env_or("SOAK_CYCLES", 1000);
    let fps: u32 = env_or("SOAK_FPS", 5);
    let every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", 30));
    let run_for = Duration::from_secs(minutes * 60);

    let dir = deskport_testsupport::data_dir();
    let dir = dir.path();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The sessions (as `nobody`) run this program's workload mode from a copy they can read.
    let exe = dir.join("soak-workload");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("rdp");
    let accounts: Vec<String> = (1..=sessions).map(|i| format!("soak{i:02}")).collect();
    // Two cyclers, one account each (a second connection to an account takes its session
    // over from the first).
    for account in accounts
        .iter()
        .map(String::as_str)
        .chain(["cycler1", "cycler2"])
    {
        support::add_user(&data, account, PASSWORD);
    }
    let frames = (minutes * 60 + 120) * u64::from(fps);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[rdp_server]\nsession_unix_user = \"nobody\"\nsession_timeout_secs = {SESSION_TIMEOUT}\n\
             session_x_server = \"xvnc\"\nnla_only = true\nmax_new_connections_per_source_per_sec = 100\n\
             session_commands = [\"case \\\"$DESKPORT_ACCOUNT\\\" in cycler*) exec sleep 100000;; esac; exec {} --workload --display $DISPLAY --frames {} --fps {fps} --log /dev/null\"]\n",
            exe.display(),
            frames.min(u64::from(u16::MAX)),
        ),
    )
    .unwrap();
    let port = deskport_testsupport::free_port(LO);
    let server = support::rdp_server(&data, &config, port, "warn", &dir.join("server.log"));
    wait_listening(port, None, "the RDP server to listen");
    let pid = server.pid();
    let target = format!("127.0.0.1:{port}");

    // One connect first: the cycler's known-hosts file then trusts the server.
    let known_hosts = dir.join("known_hosts");
    assert!(
        connect_once(&target, "cycler1", &known_hosts, dir, 0),
        "the first connection"
    );
    let baseline = sample(pid, Instant::now(), &mut [], 0);

    // The sessions, each with its xfreerdp on one shared client display.
    let client_display = Xvfb::start(SCREEN.0, SCREEN.1);
    let started = Instant::now();
    let mut clients: Vec<ProcessGuard> = accounts
        .iter()
        .map(|account| {
            let log = std::fs::File::create(dir.join(format!("xfreerdp-{account}.log"))).unwrap();
            let client = ProcessGuard::spawn(
                "xfreerdp",
                client_display
                    .command("xfreerdp")
                    .arg(format!("/v:{target}"))
                    .arg(format!("/u:{account}"))
                    .arg(format!("/p:{PASSWORD}"))
                    .args(["/cert:ignore", "/sec:nla", "/network:lan", "/bpp:32"])
                    .arg(format!("/size:{}x{}", SCREEN.0, SCREEN.1))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            )
            .unwrap();
            // (Logons one after another: twenty at once would be a burst, not a soak.)
            std::thread::sleep(Duration::from_millis(500));
            client
        })
        .collect();

    // The cycles, two at a time, while the sessions run.
    let done = Arc::new(AtomicU32::new(1));
    let failed = Arc::new(AtomicU32::new(0));
    let cyclers: Vec<_> = ["cycler1", "cycler2"]
        .into_iter()
        .map(|account| {
            let (done, failed) = (done.clone(), failed.clone());
            let target = target.clone();
            let known_hosts = known_hosts.clone();
            let dir = dir.to_owned();
            std::thread::spawn(move || loop {
                let n = done.fetch_add(1, Ordering::Relaxed);
                if n >= cycles_wanted {
                    done.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                if !connect_once(&target, account, &known_hosts, &dir, n) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut samples = vec![sample(pid, started, &mut clients, 1)];
    while started.elapsed() < run_for || done.load(Ordering::Relaxed) < cycles_wanted {
        std::thread::sleep(every.min(Duration::from_secs(5)));
        if samples
            .last()
            .is_some_and(|s| started.elapsed().as_secs() >= s.at_s + every.as_secs())
        {
            let s = sample(pid, started, &mut clients, done.load(Ordering::Relaxed));
            eprintln!("soak: {s:?}");
            samples.push(s);
        }
        if started.elapsed() > run_for + Duration::from_secs(30 * 60) {
            eprintln!("soak: the cycles did not finish in 30 minutes more; stopping");
            break;
        }
    }
    let end = sample(pid, started, &mut clients, done.load(Ordering::Relaxed));
    samples.push(end);
    for c in cyclers {
        let _ = c.join();
    }
    let alive = end.clients;

    // The clients leave; after the timeout the sessions must be gone, and all they ran.
    drop(clients);
    std::thread::sleep(Duration::from_secs(SESSION_TIMEOUT + 15));
    let after = sample(pid, started, &mut [], done.load(Ordering::Relaxed));
    let left: Vec<(u32, String)> = descendants(pid);
    drop(client_display);
    let cycles = done.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);

    for s in &samples {
        println!(
            "SOAK|curve|{}|{:.1}|{}|{}|{}|{}|{}",
            s.at_s,
            s.rss_kb as f64 / 1024.0,
            s.fds,
            s.threads,
            s.x_servers,
            s.clients,
            s.cycles
        );
    }
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_kb as f64 / 1024.0).collect();
    // Growth over the second half of the run: what a leak would show (the first half holds
    // the sessions' start-up).
    let half = &samples[samples.len() / 2..];
    let growth = half.last().map_or(0.0, |l| l.rss_kb as f64)
        - half.first().map_or(0.0, |f| f.rss_kb as f64);
    println!(
        "SOAK|summary|{sessions}|{minutes}|{fps}|{alive}|{cycles}|{failures}|{:.1}|{:.1}|{:.1}|{:.1}|{}|{}|{}|{}|{}",
        baseline.rss_kb as f64 / 1024.0,
        rss.iter().cloned().fold(f64::MIN, f64::max),
        growth / 1024.0,
        after.rss_kb as f64 / 1024.0,
        baseline.fds,
        samples.iter().map(|s| s.fds).max().unwrap_or(0),
        after.fds,
        after.x_servers,
        left.len()
    );
    let mut problems = Vec::new();
    if alive < sessions {
        problems.push(format!("{} of {sessions} sessions died", sessions - alive));
    }
    if failures > 0 {
        problems.push(format!("{failures} of {cycles} cycles failed"));
    }
    if !left.is_empty() {
        problems.push(format!("left after logoff: {left:?}"));
    }
    if after.fds > baseline.fds + 2 {
        problems.push(format!(
            "descriptors: {} before, {} after",
            baseline.fds, after.fds
        ));
    }
    drop(server);
    if !problems.is_empty() {
        println!("soak: FAILED: {}", problems.join("; "));
        let _ = std::fs::copy(
            dir.join("server.log"),
            deskport_testsupport::artifact_dir("soak").join("server.log"),
        );
        std::process::exit(1);
    }
    println!("soak: passed");
}

/// One connect/disconnect cycle of `account`: `deskport connect --screenshot`.
fn connect_once(target: &str, account: &str, known_hosts: &Path, dir: &Path, n: u32) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args([
            "connect",
            target,
            "-u",
            account,
            "-p",
            "-",
            "--timeout",
            "60",
        ])
        .arg("--screenshot")
        .arg(dir.join(format!("cycle-{account}.png")))
        .arg("--known-hosts")
        .arg(known_hosts)
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            writeln!(child.stdin.take().unwrap(), "{PASSWORD}")?;
            child.wait_with_output()
        });
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "soak: cycle {n} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("soak: cycle {n} could not run: {e}");
            false
        }
    }
}
