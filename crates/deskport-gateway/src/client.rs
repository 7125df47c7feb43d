//! The client side of the WebSocket form: what `deskport connect --gateway` speaks. Over a
//! connection the caller made (TLS, its certificate checked), it upgrades, sets the tunnel
//! up with a token and gives back a byte stream to the instance's RDP service.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};

use crate::packet::{self, hresult, Packet};
use crate::ws;

/// Why a tunnel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the gateway's connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gateway answered HTTP {0}: {1}")]
    Http(u16, String),
    #[error("the gateway's WebSocket answer is not valid: {0}")]
    Handshake(String),
    #[error("the gateway refused at {step}: {} ({code:#010x})", hresult::name(*.code))]
    Refused { step: &'static str, code: u32 },
    #[error("the gateway sent something unexpected at {step}: {what}")]
    Protocol { step: &'static str, what: String },
}

/// What a tunnel is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The gateway's host name (the `Host` header).
    pub host: String,
    /// The PAA cookie (the gateway token).
    pub token: String,
    /// The instance as the token names it (its name or an address) and its RDP port.
    pub resource: String,
    pub port: u16,
    /// This machine's name, for the gateway's log.
    pub client_name: String,
}

/// Sets a tunnel up over `io` and returns the RDP byte stream through it (a task carries the
/// bytes until either side ends).
pub async fn connect<IO>(mut io: IO, request: &Request) -> Result<DuplexStream, Error>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes())
    };
    let head = format!(
        "RDG_OUT_DATA {} HTTP/1.1\r\nHost: {}\r\nCache-Control: no-cache\r\nUser-Agent: deskport\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\nRDG-Connection-Id: {{{}}}\r\nRDG-Auth-Scheme: PAA\r\n\r\n",
        crate::PATH,
        request.host,
        uuid::Uuid::new_v4()
    );
    io.write_all(head.as_bytes()).await?;
    let response = read_head(&mut io).await?;
    let status = response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    if status != 101 {
        let reason = response.lines().next().unwrap_or_default().to_owned();
        return Err(Error::Http(status, reason));
    }
    let accept = response.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_owned())
    });
    if accept.as_deref() != Some(ws::accept_key(&key).as_str()) {
        return Err(Error::Handshake(format!(
            "Sec-WebSocket-Accept is {accept:?}"
        )));
    }

    let mut conn = Conn {
        io,
        frames: ws::Decoder::new(256 * 1024),
        packets: packet::Decoder::new(packet::HEADER + 2 + packet::MAX_DATA),
    };
    conn.send(&Packet::HandshakeRequest {
        major: 1,
        minor: 0,
        client_version: 0,
        extended_auth: packet::EXTENDED_AUTH_PAA,
    })
    .await?;
    match conn.next("the handshake").await? {
        Packet::HandshakeResponse { error: 0, .. } => {}
        Packet::HandshakeResponse { error, .. } => return refused("the handshake", error),
        other => return unexpected("the handshake", other),
    }
    conn.send(&Packet::TunnelCreate {
        caps: 0,
        paa_cookie: Some(request.token.clone()),
    })
    .await?;
    match conn.next("the tunnel's creation").await? {
        Packet::TunnelResponse { status: 0, .. } => {}
        Packet::TunnelResponse { status, .. } => return refused("the tunnel's creation", status),
        other => return unexpected("the tunnel's creation", other),
    }
    conn.send(&Packet::TunnelAuth {
        client_name: request.client_name.clone(),
    })
    .await?;
    match conn.next("the tunnel's authorization").await? {
        Packet::TunnelAuthResponse { error: 0, .. } => {}
        Packet::TunnelAuthResponse { error, .. } => {
            return refused("the tunnel's authorization", error)
        }
        other => return unexpected("the tunnel's authorization", other),
    }
    conn.send(&Packet::ChannelCreate {
        resources: vec![request.resource.clone()],
        alternates: Vec::new(),
        port: request.port,
        protocol: packet::PROTOCOL_RDP,
    })
    .await?;
    match conn.next("the channel's creation").await? {
        Packet::ChannelResponse { error: 0, .. } => {}
        Packet::ChannelResponse { error, .. } => return refused("the channel's creation", error),
        other => return unexpected("the channel's creation", other),
    }
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(conn.pump(ours));
    Ok(theirs)
}

fn refused<T>(step: &'static str, code: u32) -> Result<T, Error> {
    Err(Error::Refused { step, code })
}

fn unexpected<T>(step: &'static str, packet: Packet) -> Result<T, Error> {
    Err(Error::Protocol {
        step,
        what: format!("packet type {:#x}", packet.kind()),
    })
}

/// The response's head, up to its blank line (read byte by byte: nothing after it is taken).
async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<String, Error> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(Error::Handshake("the response's head is too long".into()));
        }
        let byte = io.read_u8().await?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

struct Conn<IO> {
    io: IO,
    frames: ws::Decoder,
    packets: packet::Decoder,
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn<IO> {
    async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        self.send_bytes(&packet.encode()).await
    }

    async fn send_bytes(&mut self, packet: &[u8]) -> Result<(), Error> {
        let mask: [u8; 4] = rand_mask();
        self.io
            .write_all(&ws::frame(ws::OP_BINARY, packet, Some(mask)))
            .await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next packet (answering pings on the way).
    async fn next(&mut self, step: &'static str) -> Result<Packet, Error> {
        loop {
            match self.packets.next_packet() {
                Ok(Some(Packet::Keepalive)) => continue,
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Protocol {
                        step,
                        what: e.to_string(),
                    })
                }
            }
            match self.frames.next_frame() {
                Ok(Some(ws::Frame::Binary(bytes))) => self.packets.extend(&bytes),
                Ok(Some(ws::Frame::Ping(payload))) => {
                    let frame = ws::frame(ws::OP_PONG, &payload, Some(rand_mask()));
                    self.io.write_all(&frame).await?;
                }
                Ok(Some(ws::Frame::Pong)) => {}
                Ok(Some(ws::Frame::Close(_))) => {
                    return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(None) => {
                    let mut buf = [0u8; 16 * 1024];
                    let n = self.io.read(&mut buf).await?;
                    if n == 0 {
                        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.frames.extend(&buf[..n]);
                }
                Err(e) => {
                    return Err(Error::Protocol {
                        step,
                        what: e.to_string(),
                    })
                }
            }
        }
    }

    /// RDP bytes between `local` and the tunnel until either ends.
    async fn pump(mut self, local: DuplexStream) {
        let (mut from_local, mut to_local) = tokio::io::split(local);
        let mut buf = vec![0u8; packet::MAX_DATA];
        loop {
            tokio::select! {
                read = from_local.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if self.send_bytes(&packet::data_packet(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                },
                packet = self.next("the session") => match packet {
                    Ok(Packet::Data(data)) => {
                        if to_local.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    Ok(Packet::CloseChannel { status }) => {
                        if status != 0 {
                            tracing::warn!(status = hresult::name(status), "The gateway closed the session");
                        }
                        let _ = self.send(&Packet::CloseChannelResponse { status: 0 }).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    }
}

fn rand_mask() -> [u8; 4] {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    [b[0], b[1], b[2], b[3]]
}
