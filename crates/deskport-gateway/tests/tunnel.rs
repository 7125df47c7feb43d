//! The gateway over real HTTP on loopback, driven by its own client (`client::connect`) and
//! by raw requests, with an authorizer of the test's own: the manager's authorizer and real
//! clients (xfreerdp, `deskport connect`) are tested in `crates/deskport/tests/it/gateway.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskport_gateway::packet::{self, hresult, Packet};
use deskport_gateway::{
    client, ws, Authorizer, Event, Grant, Limits, RdGateway, Refusal, RefusalKind,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

#[derive(Debug)]
struct Fake {
    target: SocketAddr,
    allowed: Mutex<bool>,
    changes: watch::Sender<u64>,
    events: Mutex<Vec<Event>>,
}

#[async_trait::async_trait]
impl Authorizer for Fake {
    async fn open(&self, cookie: &str, _: SocketAddr) -> Result<Grant, Refusal> {
        if cookie != "good token" {
            // The authorizer records its own refusals.
            self.events.lock().unwrap().push(Event::Refused {
                reason: "unknown token".into(),
            });
            return Err(Refusal::new(RefusalKind::Token, "unknown token"));
        }
        Ok(Grant {
            token_id: Uuid::nil(),
            user_id: Uuid::nil(),
            user: "alice".into(),
            project_id: Uuid::nil(),
            instance_id: Uuid::nil(),
            instance: "desk".into(),
            target: self.target,
            resources: vec!["desk".into(), "198.51.100.7".into()],
            ports: vec![3389],
        })
    }

    async fn recheck(&self, _: &Grant) -> Result<(), Refusal> {
        match *self.allowed.lock().unwrap() {
            true => Ok(()),
            false => Err(Refusal::new(
                RefusalKind::Policy,
                "gateway access switched off",
            )),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn record(&self, _: SocketAddr, _: Option<&Grant>, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

struct Setup {
    gateway: SocketAddr,
    fake: Arc<Fake>,
    /// Connections the "RDP service" accepted.
    accepted: Arc<Mutex<u32>>,
}

/// A gateway on loopback in front of an echo service standing for the instance's RDP.
async fn setup() -> Setup {
    setup_with(Limits::default()).await
}

async fn setup_with(limits: Limits) -> Setup {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = echo.accept().await.unwrap();
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let fake = Arc::new(Fake {
        target,
        allowed: Mutex::new(true),
        changes: watch::channel(0).0,
        events: Mutex::new(Vec::new()),
    });
    let gateway = RdGateway::new(fake.clone(), limits);
    let app: axum::Router = gateway.routes();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Setup {
        gateway: addr,
        fake,
        accepted,
    }
}

fn request(token: &str, resource: &str, port: u16) -> client::Request {
    client::Request {
        host: "gateway.test".into(),
        token: token.into(),
        resource: resource.into(),
        port,
        client_name: "laptop".into(),
    }
}

#[tokio::test]
async fn a_granted_tunnel_carries_bytes_both_ways_and_is_cut_when_withdrawn() {
    let s = setup().await;
    let io = TcpStream::connect(s.gateway).await.unwrap();
    let mut rdp = client::connect(io, &request("good token", "DESK", 3389))
        .await
        .unwrap();
    // 200 KiB through: several DATA packets each way.
    let sent: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut rdp);
    let (_, got) = tokio::join!(async { w.write_all(&sent).await.unwrap() }, async {
        let mut got = vec![0u8; sent.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    });
    assert!(got == sent, "the echo came back whole");

    // The grant is withdrawn: the tunnel is cut (the client's stream ends).
    *s.fake.allowed.lock().unwrap() = false;
    s.fake.changes.send_modify(|v| *v += 1);
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), rdp.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the tunnel ends after the grant is withdrawn"
    );
    let events = s.fake.events.lock().unwrap().clone();
    assert!(matches!(events[0], Event::Opened { .. }), "{events:?}");
    assert!(
        events.contains(&Event::Cut {
            reason: "gateway access switched off".into()
        }),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_bad_token_and_a_channel_elsewhere_are_refused_before_any_rdp_byte() {
    let s = setup().await;
    let io = TcpStream::connect(s.gateway).await.unwrap();
    let err = client::connect(io, &request("bad token", "desk", 3389))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            client::Error::Refused {
                code: hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
                ..
            }
        ),
        "{err}"
    );
    for (resource, port) in [("desk", 22), ("other-host", 3389), ("127.0.0.1", 3389)] {
        let io = TcpStream::connect(s.gateway).await.unwrap();
        let err = client::connect(io, &request("good token", resource, port))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                client::Error::Refused {
                    code: hresult::E_PROXY_RAP_ACCESSDENIED,
                    ..
                }
            ),
            "{resource}:{port}: {err}"
        );
    }
    assert_eq!(
        *s.accepted.lock().unwrap(),
        0,
        "nothing reached the service"
    );
    let refused = s
        .fake
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Refused { .. }))
        .count();
    assert_eq!(refused, 4);
}

/// Reads an HTTP response head.
async fn head(io: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(io.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

/// The legacy form as FreeRDP 2.11 speaks it: OUT answered 200 with a 10-byte seed and then
/// packets (chunked); IN twice on one connection, the second chunked, one packet per chunk.
#[tokio::test]
async fn the_legacy_form_pairs_in_and_out_by_connection_id() {
    let s = setup().await;
    let id = "{0f8fad5b-d9cb-469f-a165-70867728950e}";
    let mut out = TcpStream::connect(s.gateway).await.unwrap();
    out.write_all(
        format!(
            "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nConnection: Keep-Alive\r\n\
             RDG-Connection-Id: {id}\r\nRDG-Auth-Scheme: PAA\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let out_head = head(&mut out).await;
    assert!(out_head.starts_with("HTTP/1.1 200 OK\r\n"), "{out_head}");
    assert!(
        out_head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{out_head}"
    );
    let mut input = TcpStream::connect(s.gateway).await.unwrap();
    let in_request = format!(
        "RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nConnection: Keep-Alive\r\n\
         RDG-Connection-Id: {id}\r\nRDG-Auth-Scheme: PAA\r\n"
    );
    input
        .write_all(format!("{in_request}Content-Length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let in_head = head(&mut input).await;
    assert!(in_head.starts_with("HTTP/1.1 200 OK\r\n"), "{in_head}");
    input
        .write_all(format!("{in_request}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let send = |packet: Vec<u8>| {
        format!("{:X}\r\n", packet.len())
            .into_bytes()
            .into_iter()
            .chain(packet)
            .chain(*b"\r\n")
            .collect::<Vec<u8>>()
    };

    // The OUT body, de-chunked.
    let mut body = Dechunk::default();
    let seed = body.take(&mut out, 10).await;
    assert_eq!(seed.len(), 10);
    let mut decoder = packet::Decoder::new(1 << 20);
    let mut next = async |out: &mut TcpStream, body: &mut Dechunk| loop {
        if let Some(p) = decoder.next_packet().unwrap() {
            return p;
        }
        let bytes = body.take(out, 1).await;
        decoder.extend(&bytes);
    };
    input
        .write_all(&send(
            Packet::HandshakeRequest {
                major: 1,
                minor: 0,
                client_version: 0,
                extended_auth: packet::EXTENDED_AUTH_PAA,
            }
            .encode(),
        ))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut out, &mut body).await,
        Packet::HandshakeResponse { error: 0, .. }
    ));
    let steps = [
        Packet::TunnelCreate {
            caps: 0x0D,
            paa_cookie: Some("good token".into()),
        },
        Packet::TunnelAuth {
            client_name: "laptop".into(),
        },
        Packet::ChannelCreate {
            resources: vec!["198.51.100.7".into()],
            alternates: vec![],
            port: 3389,
            protocol: 3,
        },
    ];
    for step in steps {
        input.write_all(&send(step.encode())).await.unwrap();
        let answer = next(&mut out, &mut body).await;
        let ok = matches!(
            answer,
            Packet::TunnelResponse { status: 0, .. }
                | Packet::TunnelAuthResponse { error: 0, .. }
                | Packet::ChannelResponse { error: 0, .. }
        );
        assert!(ok, "{step:?} -> {answer:?}");
    }
    input
        .write_all(&send(packet::data_packet(b"hello through the legacy form")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut out, &mut body).await,
        Packet::Data(bytes::Bytes::from_static(b"hello through the legacy form"))
    );
    // The client goes: the tunnel ends and says so.
    drop(input);
    drop(out);
    for _ in 0..50 {
        if s.fake
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Closed { .. }))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no Closed event: {:?}", s.fake.events.lock().unwrap());
}

/// A chunked body read as it comes.
#[derive(Default)]
struct Dechunk {
    left_in_chunk: usize,
}

impl Dechunk {
    /// At least `min` bytes of the body.
    async fn take(&mut self, io: &mut TcpStream, min: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < min {
            if self.left_in_chunk == 0 {
                let mut line = Vec::new();
                while !line.ends_with(b"\r\n") {
                    line.push(io.read_u8().await.unwrap());
                }
                let size = std::str::from_utf8(&line).unwrap().trim();
                let size = if size.is_empty() {
                    continue;
                } else {
                    usize::from_str_radix(size, 16).unwrap()
                };
                assert!(
                    line.len() <= 10,
                    "FreeRDP reads chunk sizes of 10 bytes at most"
                );
                self.left_in_chunk = size;
                if size == 0 {
                    panic!("the body ended");
                }
            }
            let mut buf = vec![0u8; self.left_in_chunk];
            let n = io.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            self.left_in_chunk -= n;
            if self.left_in_chunk == 0 {
                let mut crlf = [0u8; 2];
                io.read_exact(&mut crlf).await.unwrap();
            }
        }
        out
    }
}

/// The WebSocket handshake as FreeRDP 2.11 makes it: the method is not GET, the key not
/// base64; and what is not a gateway request gets a clear refusal.
#[tokio::test]
async fn freerdps_handshake_is_accepted_and_other_requests_refused() {
    let s = setup().await;
    let mut io = TcpStream::connect(s.gateway).await.unwrap();
    io.write_all(
        b"RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nCache-Control: no-cache\r\nPragma: no-cache\r\n\
          Accept: */*\r\nUser-Agent: MS-RDGateway/1.0\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-Websocket-Version: 13\r\nSec-Websocket-Key: ABCDEFGHIJKLMNO\r\n\
          RDG-Connection-Id: {0f8fad5b-d9cb-469f-a165-70867728950e}\r\nRDG-Auth-Scheme: PAA\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let response = head(&mut io).await;
    assert!(
        response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains(
            &format!(
                "sec-websocket-accept: {}",
                ws::accept_key("ABCDEFGHIJKLMNO")
            )
            .to_ascii_lowercase()
        ),
        "{response}"
    );
    // A text frame is not the transport: the tunnel ends.
    io.write_all(&ws::frame(ws::OP_TEXT, b"hello", Some([1, 2, 3, 4])))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the gateway hangs up on a text frame");

    for request in [
        "GET /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
        "RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nRDG-Connection-Id: {1234}\r\nContent-Length: 0\r\n\r\n",
        "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nRDG-Connection-Id: not/an id\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut io = TcpStream::connect(s.gateway).await.unwrap();
        io.write_all(request.as_bytes()).await.unwrap();
        let response = head(&mut io).await;
        assert!(
            response.starts_with("HTTP/1.1 4"),
            "{request:?} -> {response}"
        );
    }
}

/// The bounds: tunnels beyond the limit get 503 (and are let in again once one ends); a
/// tunnel not set up in time is dropped and recorded.
#[tokio::test]
async fn tunnels_are_bounded_in_number_and_setup_time() {
    let s = setup_with(Limits {
        max_tunnels: 1,
        setup_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let upgrade = "RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ABCDEFGHIJKLMNO\r\n\r\n";
    // The first holds the only tunnel without saying anything.
    let mut idle = TcpStream::connect(s.gateway).await.unwrap();
    idle.write_all(upgrade.as_bytes()).await.unwrap();
    assert!(head(&mut idle).await.starts_with("HTTP/1.1 101"));
    let mut second = TcpStream::connect(s.gateway).await.unwrap();
    second.write_all(upgrade.as_bytes()).await.unwrap();
    let busy = head(&mut second).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    // The idle one is dropped when its setup time is up, and says why.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the idle tunnel is dropped");
    let mut refused = false;
    for _ in 0..50 {
        refused = s.fake.events.lock().unwrap().iter().any(
            |e| matches!(e, Event::Refused { reason } if reason.contains("not set up within")),
        );
        if refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "{:?}", s.fake.events.lock().unwrap());
    // Its place is free again.
    let io = TcpStream::connect(s.gateway).await.unwrap();
    let mut rdp = client::connect(io, &request("good token", "desk", 3389))
        .await
        .unwrap();
    rdp.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    rdp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
}
