//! The listener's caps against one hostile address, with real sockets from two loopback
//! source addresses: 127.0.0.1 holds half-sent requests up to its cap (and is refused beyond
//! it) while 127.0.0.2 still gets its answer; the half-sent requests are closed when the
//! header-read timeout runs out; `/metrics` counts the refusals; a body that stops half-way
//! is given up after the body timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use deskport_manager::{HttpLimits, ManagerConfig};

/// A TCP connection to `target` from `source`.
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> TcpStream {
    let stream = deskport_testsupport::connect_from(source.into(), target).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Whether the server closed `stream` (a read ends or fails without data).
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

fn get(source: Ipv4Addr, target: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(source, target);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: manager\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn one_address_cannot_shut_another_out() {
    const CAP: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, refusals) = runtime.block_on(async {
        let config = ManagerConfig {
            data_dir: dir.path().to_owned(),
            ..ManagerConfig::default()
        };
        let store = deskport_manager::open_store(&config).await.unwrap();
        deskport_manager::bootstrap(&store, Some("correct horse battery".into()))
            .await
            .unwrap();
        let state = deskport_manager::state(store, &config);
        let refusals = state.http_refusals.clone();
        let app = deskport_manager::app(state, config.body_limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(5),
            per_source: CAP,
            max_connections: 1000,
            body_timeout: Duration::from_secs(1),
        };
        tokio::spawn(deskport_manager::serve::serve_connections(
            listener,
            app,
            None,
            limits,
            refusals.clone(),
            std::future::pending(),
        ));
        (addr, refusals)
    });
    let attacker = Ipv4Addr::LOCALHOST;
    let other = Ipv4Addr::new(127, 0, 0, 2);

    // The attacker's half-sent requests, up to its cap.
    let started = Instant::now();
    let mut holders: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect_from(attacker, addr);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: manager\r\n")
                .unwrap();
            s
        })
        .collect();
    // One more from the attacker is closed at once, unanswered.
    let mut beyond = connect_from(attacker, addr);
    let _ = beyond.write_all(b"GET /healthz HTTP/1.1\r\nHost: manager\r\n\r\n");
    assert!(
        closed(&mut beyond),
        "the attacker's connection past its cap"
    );

    // Meanwhile the other address is answered, the attacker's requests still held.
    let answer = get(other, addr, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    if started.elapsed() < Duration::from_secs(4) {
        let probe = &mut holders[0];
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 16];
        let still_open = matches!(
            probe.read(&mut buf),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        );
        assert!(still_open, "the attacker's requests are held, not dropped");
        probe
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    // The half-sent requests end when the header-read timeout runs out (5 s here).
    for holder in &mut holders {
        assert!(closed(holder), "a half-sent request is closed");
    }
    let metrics = get(other, addr, "/metrics");
    let refused = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("deskport_manager_connections_refused_total{cap=\"per_source\"} ")
        })
        .unwrap_or_else(|| panic!("no refusal counter in: {metrics}"));
    assert!(refused.trim().parse::<u64>().unwrap() >= 1, "{metrics}");
    assert!(
        refusals
            .per_source
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The attacker may come back once its connections are gone.
    let answer = get(attacker, addr, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops half-way is given up after the body timeout (1 s here): the request
    // is answered with an error instead of waiting for the rest.
    let mut slow = connect_from(attacker, addr);
    slow.write_all(
        b"POST /api/v1/auth/tokens HTTP/1.1\r\nHost: manager\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"user\": \"adm",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
}
