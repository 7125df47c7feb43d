//! One tunnel's life, whichever HTTP form carries it: the setup (each step answered with the
//! response packet the client waits for, a refusal with a failing HRESULT, then the end),
//! then RDP both ways in DATA packets until an end closes or the grant is withdrawn.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::http::Shared;
use crate::packet::{self, hresult, Packet};
use crate::ws;
use crate::{Event, Grant, Refusal};

/// The longest packet accepted during the setup (a token, names): 16 KiB.
const SETUP_LIMIT: usize = 16 * 1024;
/// A DATA packet at most.
const DATA_LIMIT: usize = packet::HEADER + 2 + packet::MAX_DATA;
/// What is read from the instance at once (at most one DATA packet's worth).
const READ_SIZE: usize = packet::MAX_DATA;

/// What goes to the client, in order.
#[derive(Debug)]
pub(crate) enum Out {
    Packet(Vec<u8>),
    /// The answer to a WebSocket ping.
    Pong(Bytes),
}

/// Where the client's bytes come from.
pub(crate) enum Input {
    /// The upgraded connection's read half, framed as WebSocket.
    Ws {
        read: Box<dyn AsyncRead + Send + Unpin>,
        frames: ws::Decoder,
        /// Where reads land (kept: one allocation per tunnel).
        buf: Vec<u8>,
    },
    /// The legacy form's `RDG_IN_DATA` body, de-chunked by the HTTP server.
    Body(mpsc::Receiver<Bytes>),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Ws { .. } => "Input::Ws",
            Input::Body(_) => "Input::Body",
        })
    }
}

/// Why a tunnel ended.
#[derive(Debug)]
enum End {
    /// A normal end, said so in the audit log.
    Done(String),
    /// Refused before any RDP byte flowed.
    Refused(String),
    /// Refused by the authorizer, which recorded it.
    RefusedByAuthorizer(String),
}

impl Input {
    /// The client's next bytes; `None` at its end (a WebSocket close counts).
    async fn next(&mut self, out: &mpsc::Sender<Out>) -> Result<Option<Bytes>, String> {
        match self {
            Input::Body(rx) => Ok(rx.recv().await),
            Input::Ws { read, frames, buf } => loop {
                match frames.next_frame().map_err(|e| e.to_string())? {
                    Some(ws::Frame::Binary(b)) => return Ok(Some(b)),
                    Some(ws::Frame::Ping(payload)) => {
                        let _ = out.send(Out::Pong(payload)).await;
                    }
                    Some(ws::Frame::Pong) => {}
                    Some(ws::Frame::Close(_)) => return Ok(None),
                    None => {
                        buf.resize(READ_SIZE, 0);
                        let n = match read.read(buf).await {
                            Ok(n) => n,
                            // Clients often end without TLS's close_notify: that is an end.
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                            Err(e) => return Err(e.to_string()),
                        };
                        if n == 0 {
                            return Ok(None);
                        }
                        frames.extend(&buf[..n]);
                    }
                }
            },
        }
    }
}

/// The client's packets, from its bytes.
struct Packets {
    input: Input,
    decoder: packet::Decoder,
}

impl Packets {
    /// The next packet of the setup (keepalives skipped).
    async fn setup_next(&mut self, out: &mpsc::Sender<Out>) -> Result<Packet, SetupEnd> {
        loop {
            match self.next(out).await {
                Ok(Some(Packet::Keepalive)) => continue,
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => return Err((None, End::Done("the client left".into()))),
                Err(e) => return Err((None, End::Refused(format!("bad request: {e}")))),
            }
        }
    }

    async fn next(&mut self, out: &mpsc::Sender<Out>) -> Result<Option<Packet>, String> {
        loop {
            if let Some(packet) = self.decoder.next_packet().map_err(|e| e.to_string())? {
                return Ok(Some(packet));
            }
            match self.input.next(out).await? {
                Some(bytes) => self.decoder.extend(&bytes),
                None if self.decoder.pending() == 0 => return Ok(None),
                None => return Err("the client ended in the middle of a packet".into()),
            }
        }
    }
}

/// Runs one tunnel to its end; everything it does is recorded through the authorizer.
pub(crate) async fn run(
    shared: Arc<Shared>,
    input: Input,
    out: mpsc::Sender<Out>,
    peer: SocketAddr,
    transport: &'static str,
) {
    let mut packets = Packets {
        input,
        decoder: packet::Decoder::new(SETUP_LIMIT),
    };
    let setup = tokio::time::timeout(
        shared.limits.setup_timeout,
        setup(&shared, &mut packets, &out, peer),
    )
    .await;
    let (grant, target, client_name) = match setup {
        Ok(Ok(open)) => open,
        Ok(Err((grant, End::Refused(reason)))) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %reason, "RD Gateway: refused");
            shared
                .authorizer
                .record(peer, grant.as_ref(), Event::Refused { reason })
                .await;
            return;
        }
        Ok(Err((_, End::RefusedByAuthorizer(reason)))) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %reason, "RD Gateway: refused");
            return;
        }
        Ok(Err((_, End::Done(why)))) => {
            tracing::debug!(%peer, %why, "RD Gateway: the client left during the setup");
            return;
        }
        Err(_) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "the tunnel was not set up within {} s",
                shared.limits.setup_timeout.as_secs()
            );
            tracing::info!(%peer, %reason, "RD Gateway: refused");
            shared
                .authorizer
                .record(peer, None, Event::Refused { reason })
                .await;
            return;
        }
    };
    tracing::info!(%peer, user = %grant.user, instance = %grant.instance, %transport, "RD Gateway: tunnel open");
    shared
        .authorizer
        .record(
            peer,
            Some(&grant),
            Event::Opened {
                client_name,
                transport,
            },
        )
        .await;
    shared.stats.opened.fetch_add(1, Ordering::Relaxed);
    packets.decoder.set_limit(DATA_LIMIT);
    let (up, down, end) = relay(&shared, &grant, packets, target, &out).await;
    let event = match end {
        Relayed::Ended(why) => Event::Closed {
            to_instance: up,
            to_client: down,
            why,
        },
        Relayed::Cut(refusal) => {
            // The client logs the status; it ends when the connection closes (now).
            let _ = out
                .send(Out::Packet(
                    Packet::CloseChannel {
                        status: hresult::E_PROXY_CONNECTIONABORTED,
                    }
                    .encode(),
                ))
                .await;
            shared.stats.cut.fetch_add(1, Ordering::Relaxed);
            Event::Cut {
                reason: refusal.reason,
            }
        }
    };
    tracing::info!(%peer, user = %grant.user, instance = %grant.instance, ?event, "RD Gateway: tunnel closed");
    shared.authorizer.record(peer, Some(&grant), event).await;
}

type SetupEnd = (Option<Grant>, End);

/// Handshake, tunnel create, tunnel authorize, channel create: the grant, the connection to
/// its instance and the client's name.
async fn setup(
    shared: &Shared,
    packets: &mut Packets,
    out: &mpsc::Sender<Out>,
    peer: SocketAddr,
) -> Result<(Grant, TcpStream, String), SetupEnd> {
    let send = |packet: Packet| async move {
        out.send(Out::Packet(packet.encode()))
            .await
            .map_err(|_| (None, End::Done("the client left".into())))
    };
    // Handshake: only clients with a token (PAA) are served.
    let Packet::HandshakeRequest { extended_auth, .. } = packets.setup_next(out).await? else {
        return Err((
            None,
            End::Refused("the tunnel did not start with a handshake".into()),
        ));
    };
    let paa = extended_auth & packet::EXTENDED_AUTH_PAA != 0;
    send(Packet::HandshakeResponse {
        error: if paa {
            hresult::S_OK
        } else {
            hresult::E_PROXY_CAPABILITYMISMATCH
        },
        major: 1,
        minor: 0,
        server_version: 0,
        extended_auth: if paa { packet::EXTENDED_AUTH_PAA } else { 0 },
    })
    .await?;
    if !paa {
        return Err((
            None,
            End::Refused("the client offered no gateway token (PAA cookie)".into()),
        ));
    }

    // Tunnel create: the token.
    let refuse_tunnel = |status: u32| Packet::TunnelResponse {
        status,
        tunnel_id: None,
        caps: None,
    };
    let Packet::TunnelCreate { paa_cookie, .. } = packets.setup_next(out).await? else {
        return Err((None, End::Refused("expected a tunnel create".into())));
    };
    let Some(cookie) = paa_cookie.filter(|c| !c.is_empty()) else {
        send(refuse_tunnel(hresult::E_PROXY_COOKIE_BADPACKET)).await?;
        return Err((
            None,
            End::Refused("the tunnel create carried no token".into()),
        ));
    };
    let grant = match shared.authorizer.open(&cookie, peer).await {
        Ok(grant) => grant,
        Err(refusal) => {
            let _ = send(refuse_tunnel(refusal.hresult())).await;
            return Err((None, End::RefusedByAuthorizer(refusal.reason)));
        }
    };
    let tunnel_id = shared.stats.tunnels.fetch_add(1, Ordering::Relaxed) as u32 + 1;
    send(Packet::TunnelResponse {
        status: hresult::S_OK,
        tunnel_id: Some(tunnel_id),
        caps: Some(packet::CAP_IDLE_TIMEOUT),
    })
    .await?;

    // Tunnel authorize: the client's name (informational).
    let with_grant = |(_, end): SetupEnd| (Some(grant.clone()), end);
    let Packet::TunnelAuth { client_name } = packets.setup_next(out).await.map_err(with_grant)?
    else {
        return Err((
            Some(grant.clone()),
            End::Refused("expected a tunnel authorization".into()),
        ));
    };
    send(Packet::TunnelAuthResponse {
        error: hresult::S_OK,
        redir_flags: Some(packet::REDIR_ENABLE_ALL),
        idle_timeout_minutes: Some(0),
    })
    .await
    .map_err(with_grant)?;

    // Channel create: only the grant's instance, only RDP.
    let refuse_channel = |error: u32| Packet::ChannelResponse {
        error,
        channel_id: None,
    };
    let Packet::ChannelCreate {
        resources,
        port,
        protocol,
        ..
    } = packets.setup_next(out).await.map_err(with_grant)?
    else {
        return Err((
            Some(grant.clone()),
            End::Refused("expected a channel create".into()),
        ));
    };
    let asked = resources.first().cloned().unwrap_or_default();
    if protocol != packet::PROTOCOL_RDP || !grant.allows(&asked, port) {
        send(refuse_channel(hresult::E_PROXY_RAP_ACCESSDENIED))
            .await
            .map_err(with_grant)?;
        return Err((
            Some(grant.clone()),
            End::Refused(format!(
                "a channel to {asked}:{port} (protocol {protocol}) is not this token's instance {} ({})",
                grant.instance,
                grant.resources.join(", ")
            )),
        ));
    }
    let connect = tokio::time::timeout(
        shared.limits.connect_timeout,
        TcpStream::connect(grant.target),
    )
    .await;
    let target = match connect {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            send(refuse_channel(hresult::E_PROXY_TS_CONNECTFAILED))
                .await
                .map_err(with_grant)?;
            return Err((
                Some(grant.clone()),
                End::Refused(format!("cannot reach {}: {e}", grant.target)),
            ));
        }
        Err(_) => {
            send(refuse_channel(hresult::E_PROXY_TS_CONNECTFAILED))
                .await
                .map_err(with_grant)?;
            return Err((
                Some(grant.clone()),
                End::Refused(format!("{} did not answer", grant.target)),
            ));
        }
    };
    let _ = target.set_nodelay(true);
    send(Packet::ChannelResponse {
        error: hresult::S_OK,
        channel_id: Some(1),
    })
    .await
    .map_err(with_grant)?;
    Ok((grant, target, client_name))
}

/// How the relay ended.
enum Relayed {
    Ended(String),
    Cut(Refusal),
}

/// RDP both ways until an end closes or the grant is withdrawn; bytes to the instance and to
/// the client.
async fn relay(
    shared: &Shared,
    grant: &Grant,
    mut packets: Packets,
    target: TcpStream,
    out: &mpsc::Sender<Out>,
) -> (u64, u64, Relayed) {
    let (mut from_instance, mut to_instance) = target.into_split();
    let (mut up, mut down) = (0u64, 0u64);
    let mut changes = shared.authorizer.changes();
    changes.mark_unchanged();
    let keepalive = shared.limits.keepalive;

    let upward = async {
        loop {
            match packets.next(out).await {
                Ok(Some(Packet::Data(data))) => {
                    if let Err(e) = to_instance.write_all(&data).await {
                        return format!("the instance closed ({e})");
                    }
                    up += data.len() as u64;
                    shared
                        .stats
                        .to_instance
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Ok(Some(Packet::CloseChannel { .. })) => {
                    let _ = out
                        .send(Out::Packet(
                            Packet::CloseChannelResponse { status: 0 }.encode(),
                        ))
                        .await;
                    return "the client closed the channel".into();
                }
                Ok(Some(Packet::CloseChannelResponse { .. })) => {
                    return "the client confirmed the close".into()
                }
                Ok(Some(_)) => {}
                Ok(None) => return "the client disconnected".into(),
                Err(e) => return format!("bad request from the client: {e}"),
            }
        }
    };
    let downward = async {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            match tokio::time::timeout(keepalive, from_instance.read(&mut buf)).await {
                Err(_) => {
                    if out
                        .send(Out::Packet(Packet::Keepalive.encode()))
                        .await
                        .is_err()
                    {
                        return "the client left".to_owned();
                    }
                }
                Ok(Ok(0)) => {
                    let _ = out
                        .send(Out::Packet(
                            Packet::CloseChannel {
                                status: hresult::S_OK,
                            }
                            .encode(),
                        ))
                        .await;
                    return "the instance closed the connection".into();
                }
                Ok(Ok(mut n)) => {
                    // What else is already there goes in the same packet: fewer packets,
                    // frames and TLS records (RDP servers write a frame in many small writes).
                    while n < buf.len() {
                        match from_instance.try_read(&mut buf[n..]) {
                            Ok(0) | Err(_) => break,
                            Ok(more) => n += more,
                        }
                    }
                    if out
                        .send(Out::Packet(packet::data_packet(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return "the client left".into();
                    }
                    down += n as u64;
                    shared
                        .stats
                        .to_client
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => return format!("the instance's connection failed ({e})"),
            }
        }
    };
    let withdrawn = async {
        loop {
            if changes.changed().await.is_err() {
                // The authorizer is gone (the process stops): nothing withdraws the grant.
                std::future::pending::<()>().await;
            }
            if let Err(refusal) = shared.authorizer.recheck(grant).await {
                return refusal;
            }
        }
    };
    let end = tokio::select! {
        why = upward => Relayed::Ended(why),
        why = downward => Relayed::Ended(why),
        refusal = withdrawn => Relayed::Cut(refusal),
    };
    (up, down, end)
}
