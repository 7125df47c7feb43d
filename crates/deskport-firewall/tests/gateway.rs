//! The userspace gateway on loopback, with real sockets. Distinct client addresses come from
//! binding clients to 127.0.0.2 and 127.0.0.3 (all of 127.0.0.0/8 is loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use deskport_api::PolicyDocument;
use deskport_firewall::{Gateway, GatewayConfig};
use deskport_policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// An echo server standing in for the instance's service.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn udp_echo_server() -> SocketAddr {
    let socket = UdpSocket::bind((LO, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
            socket.send_to(&buf[..n], peer).await.unwrap();
        }
    });
    addr
}

/// The article's instance: the default group (80/443 only) plus `extra` rules, publishing TCP
/// `public` → `internal` (and the same for UDP when given).
fn policy(
    public: u16,
    internal: SocketAddr,
    udp: Option<(u16, SocketAddr)>,
    extra: &str,
) -> Policy {
    let udp_service = udp
        .map(|(p, i)| {
            format!(
                ", {{ protocol = \"udp\", public_port = {p}, internal_port = {} }}",
                i.port()
            )
        })
        .unwrap_or_default();
    let text = format!(
        r#"
[[security_groups]]
name = "default"
rules = [
  {{ template = "http" }}, {{ template = "https" }},
  {{ template = "http", remote_ip_prefix = "::/0" }}, {{ template = "https", remote_ip_prefix = "::/0" }},
  {{ direction = "egress" }},
  {extra}
]

[[instances]]
name = "desktop"
addresses = ["127.0.0.1"]
internal_address = "{}"
security_groups = ["default"]
services = [{{ public_port = {public}, internal_port = {} }}{udp_service}]
"#,
        internal.ip(),
        internal.port()
    );
    PolicyDocument::from_toml(&text)
        .unwrap()
        .to_policy()
        .unwrap()
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(to).await
}

/// Whether an echo round trip from `source` through the gateway works.
async fn echo_works(source: Ipv4Addr, to: SocketAddr) -> bool {
    let Ok(mut s) = connect_from(source, to).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// Polls `condition` until it holds, without blocking the runtime the gateway runs on.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_port() -> u16 {
    deskport_testsupport::free_port(LO)
}

#[tokio::test]
async fn rdp_is_refused_until_a_rule_allows_the_clients_address() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig::default());
    let report = gw.apply(&policy(public, internal, None, ""), 1).await;
    assert!(report.bind_errors.is_empty(), "{report:?}");
    let front = SocketAddr::new(LO, public);

    // Default group: only 80 and 443 — the published RDP port refuses.
    assert!(!echo_works(CLIENT_A, front).await);
    assert!(gw
        .metrics()
        .contains("deskport_gateway_decisions_total{verdict=\"deny\"} 1"));

    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.2/32\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 2).await;
    assert!(echo_works(CLIENT_A, front).await, "A is allowed");
    assert!(!echo_works(CLIENT_B, front).await, "B is outside the CIDR");
    assert_eq!(gw.revision(), 2);
    let metrics = gw.metrics();
    assert!(
        metrics.contains("deskport_gateway_rule_hits_total{rule="),
        "{metrics}"
    );
    assert!(metrics.contains("deskport_policy_revision 2"), "{metrics}");
}

#[tokio::test]
async fn removing_the_rule_cuts_the_live_connection() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig::default());
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.2/32\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 1).await;
    let mut live = connect_from(CLIENT_A, SocketAddr::new(LO, public))
        .await
        .unwrap();
    live.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(gw.active(), 1);

    let started = Instant::now();
    let report = gw.apply(&policy(public, internal, None, ""), 2).await;
    assert_eq!(report.revoked, 1);
    // The client sees a reset (or EOF) on its next read, without sending anything.
    let read = tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) => {}
        Ok(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("connection not cut: {other:?}"),
    }
    eprintln!("cut {:?} after the policy change", started.elapsed());
    eventually("the connection to be forgotten", || gw.active() == 0).await;
    assert!(gw
        .metrics()
        .contains("deskport_gateway_closed_total{reason=\"revoked\"} 1"));
}

#[tokio::test]
async fn a_rule_change_that_still_allows_keeps_the_connection() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig::default());
    let a = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.2/32\" }}"
    );
    let net = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    gw.apply(&policy(public, internal, None, &a), 1).await;
    let mut live = connect_from(CLIENT_A, SocketAddr::new(LO, public))
        .await
        .unwrap();
    let report = gw.apply(&policy(public, internal, None, &net), 2).await;
    assert_eq!(report.revoked, 0);
    live.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
}

#[tokio::test]
async fn connection_limit_refuses_the_excess() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig {
        max_connections: 2,
        ..GatewayConfig::default()
    });
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 1).await;
    let front = SocketAddr::new(LO, public);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(CLIENT_A, front).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    assert!(
        !echo_works(CLIENT_A, front).await,
        "third connection is over the limit"
    );
    assert!(gw.metrics().contains("{verdict=\"limit\"} 1"));
    drop(held);
    eventually("slots to free up", || gw.active() == 0).await;
    assert!(
        echo_works(CLIENT_A, front).await,
        "slots are released on close"
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig {
        idle_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    });
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 1).await;
    let mut s = connect_from(CLIENT_A, SocketAddr::new(LO, public))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection stays open: {r:?}"
    );
    assert!(gw.metrics().contains("{reason=\"idle\"} 1"));
}

#[tokio::test]
async fn bulk_transfer_arrives_intact() {
    let internal = echo_server().await;
    let public = free_port();
    let gw = Gateway::new(GatewayConfig::default());
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 1).await;
    let s = connect_from(CLIENT_A, SocketAddr::new(LO, public))
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert!(
        got == expected,
        "echoed data differs ({} of {} bytes)",
        got.len(),
        expected.len()
    );
}

#[tokio::test]
async fn unreachable_instance_resets_the_client() {
    // Nothing listens on the internal port.
    let internal = SocketAddr::new(LO, free_port());
    let public = free_port();
    let gw = Gateway::new(GatewayConfig::default());
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    gw.apply(&policy(public, internal, None, &rule), 1).await;
    assert!(!echo_works(CLIENT_A, SocketAddr::new(LO, public)).await);
    assert!(gw.metrics().contains("{reason=\"upstream_failed\"} 1"));
}

#[tokio::test]
async fn udp_flows_are_decided_relayed_and_revoked() {
    let internal = echo_server().await;
    let udp_internal = udp_echo_server().await;
    let public = free_port();
    let udp_public = deskport_testsupport::free_port(LO);
    let gw = Gateway::new(GatewayConfig::default());
    let rule = format!("{{ protocol = \"udp\", port_range_min = {udp_public}, remote_ip_prefix = \"127.0.0.2/32\" }}");
    let with = policy(public, internal, Some((udp_public, udp_internal)), &rule);
    let without = policy(public, internal, Some((udp_public, udp_internal)), "");
    let report = gw.apply(&with, 1).await;
    assert!(report.bind_errors.is_empty(), "{report:?}");
    let front = SocketAddr::new(LO, udp_public);

    let round_trip = |source: Ipv4Addr| async move {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(source), 0))
            .await
            .unwrap();
        s.connect(front).await.unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            s.send(b"dgram").await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await
            {
                return (Some(buf[..n].to_vec()), s);
            }
        }
        (None, s)
    };
    let (a, a_socket) = round_trip(CLIENT_A).await;
    assert_eq!(a.as_deref(), Some(&b"dgram"[..]));
    let (b, _) = round_trip(CLIENT_B).await;
    assert_eq!(b, None, "B is not allowed");

    let report = gw.apply(&without, 2).await;
    assert_eq!(report.revoked, 1);
    let mut buf = [0u8; 16];
    a_socket.send(b"again").await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(800), a_socket.recv(&mut buf)).await;
    assert!(r.is_err(), "a revoked flow is not relayed any more");
}

#[tokio::test]
async fn unbindable_service_is_reported_and_others_still_work() {
    let internal = echo_server().await;
    let taken = std::net::TcpListener::bind((LO, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let gw = Gateway::new(GatewayConfig::default());
    let report = gw.apply(&policy(busy, internal, None, ""), 1).await;
    assert_eq!(report.bind_errors.len(), 1, "{report:?}");
    assert!(report.bind_errors[0].contains(&busy.to_string()));
    drop(taken);
    // The next apply retries the missing listener.
    let report = gw.apply(&policy(busy, internal, None, ""), 2).await;
    assert!(report.bind_errors.is_empty(), "{report:?}");
    assert_eq!(report.listening, vec![SocketAddr::new(LO, busy)]);
}
