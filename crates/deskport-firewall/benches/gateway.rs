//! The userspace gateway against direct loopback, in the same run (SPEC §7: >= 90% of direct
//! throughput for a bulk TCP transfer; <= 1 ms added to connection setup).
//!
//! Run: `cargo bench -p deskport-firewall --bench gateway` (env `GATEWAY_BENCH_MB` sets the
//! transfer size, default 512). Client and sink are plain threads; the gateway runs on its own
//! one-worker runtime, so all three share this machine's cores as they would in production.
//! Lines starting with `BENCH|` are read by `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use deskport_api::PolicyDocument;
use deskport_firewall::{Gateway, GatewayConfig};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A server that, per connection, reads until EOF and answers with one byte; or, for the
/// latency test, echoes each byte.
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

/// Sends `bytes` to `port` and waits for the sink's acknowledgement; returns MB/s.
fn bulk(port: u16, bytes: usize) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut s = TcpStream::connect((LO, port)).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
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

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn publish(rt: &tokio::runtime::Runtime, gw: &Gateway, services: &[(u16, u16)]) {
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
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that does not match skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"gateway".contains(&a))
    {
        return;
    }
    let mb: usize = std::env::var("GATEWAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let gw = Gateway::new(GatewayConfig {
        buffer_size: 1024 * 1024,
        ..GatewayConfig::default()
    });
    let sink = server(false);
    let echo = server(true);
    let via_sink = deskport_testsupport::free_port(LO);
    let via_echo = deskport_testsupport::free_port(LO);
    publish(&rt, &gw, &[(via_sink, sink), (via_echo, echo)]);

    // Warm up, then alternate direct and gateway runs so drift affects both alike.
    bulk(sink, 64 << 20);
    bulk(via_sink, 64 << 20);
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.push(bulk(sink, mb << 20));
        via.push(bulk(via_sink, mb << 20));
    }
    let (direct, via) = (median(direct), median(via));
    println!(
        "bulk TCP transfer of {mb} MiB (median of 5): direct {direct:.0} MB/s, through the gateway {via:.0} MB/s = {:.1}% of direct (target >= 90%)",
        via / direct * 100.0
    );
    println!("BENCH|gateway bulk throughput|{via:.0}|MB/s|{direct:.0}|MB/s direct loopback|higher");

    setup_latencies(echo, 200);
    setup_latencies(via_echo, 200);
    let mut d = setup_latencies(echo, 2000);
    let mut g = setup_latencies(via_echo, 2000);
    let (d50, d99) = (percentile(&mut d, 0.5), percentile(&mut d, 0.99));
    let (g50, g99) = (percentile(&mut g, 0.5), percentile(&mut g, 0.99));
    let added = g50.saturating_sub(d50);
    println!(
        "connection setup (connect + 1-byte echo, 2000 rounds): direct median {:.0} µs p99 {:.0} µs; through the gateway median {:.0} µs p99 {:.0} µs; added median {:.0} µs (target <= 1000 µs)",
        d50.as_secs_f64() * 1e6,
        d99.as_secs_f64() * 1e6,
        g50.as_secs_f64() * 1e6,
        g99.as_secs_f64() * 1e6,
        added.as_secs_f64() * 1e6
    );
    println!(
        "BENCH|gateway connection setup (median)|{:.0}|µs|{:.0}|µs direct loopback|lower",
        g50.as_secs_f64() * 1e6,
        d50.as_secs_f64() * 1e6
    );
}
