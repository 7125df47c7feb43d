//! MS-TSGU's HTTP transport packets (MS-TSGU 2.2.10): an 8-byte header (type, reserved,
//! length including the header), little-endian fields, UTF-16LE strings with a byte count.
//!
//! Both directions are here, so the gateway (which reads requests and writes responses) and
//! `deskport connect` (the reverse) share one codec. Decoding is total: any byte string gives
//! a packet or an [`Error`], never a panic (fuzzed through [`decode`]).
//!
//! What FreeRDP 2.11 needs, beyond the specification, shapes the encoders: every refusal
//! carries an HRESULT with bit 31 set (the client treats any other value as success), a DATA
//! packet's length is exactly 10 + its payload, a CLOSE_CHANNEL always carries its status
//! (without it the client crashes), and no consent message or statement of health request is
//! ever sent (the first makes xfreerdp wait for an answer on its terminal).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HANDSHAKE_REQUEST: u16 = 0x01;
pub const HANDSHAKE_RESPONSE: u16 = 0x02;
pub const EXTENDED_AUTH_MSG: u16 = 0x03;
pub const TUNNEL_CREATE: u16 = 0x04;
pub const TUNNEL_RESPONSE: u16 = 0x05;
pub const TUNNEL_AUTH: u16 = 0x06;
pub const TUNNEL_AUTH_RESPONSE: u16 = 0x07;
pub const CHANNEL_CREATE: u16 = 0x08;
pub const CHANNEL_RESPONSE: u16 = 0x09;
pub const DATA: u16 = 0x0A;
pub const SERVICE_MESSAGE: u16 = 0x0B;
pub const REAUTH_MESSAGE: u16 = 0x0C;
pub const KEEPALIVE: u16 = 0x0D;
pub const CLOSE_CHANNEL: u16 = 0x10;
pub const CLOSE_CHANNEL_RESPONSE: u16 = 0x11;

/// The header's size.
pub const HEADER: usize = 8;
/// The most RDP bytes one DATA packet carries (its length field is 16 bits).
pub const MAX_DATA: usize = u16::MAX as usize;

/// Extended authentication: the PAA cookie (a token the gateway's authority issued).
pub const EXTENDED_AUTH_PAA: u16 = 0x02;
/// TUNNEL_CREATE's field: a PAA cookie follows.
pub const FIELD_PAA_COOKIE: u16 = 0x01;
/// TUNNEL_RESPONSE's fields.
pub const FIELD_TUNNEL_ID: u16 = 0x01;
pub const FIELD_CAPS: u16 = 0x02;
/// TUNNEL_AUTH_RESPONSE's fields.
pub const FIELD_REDIR_FLAGS: u16 = 0x01;
pub const FIELD_IDLE_TIMEOUT: u16 = 0x02;
/// CHANNEL_RESPONSE's field: the channel id follows.
pub const FIELD_CHANNEL_ID: u16 = 0x01;
/// The gateway's capability: it tells the client an idle timeout.
pub const CAP_IDLE_TIMEOUT: u32 = 0x02;
/// Redirection flags: every device redirection allowed (the RDP server decides).
pub const REDIR_ENABLE_ALL: u32 = 0x8000_0000;
/// CHANNEL_CREATE's protocol: RDP.
pub const PROTOCOL_RDP: u16 = 3;

/// The HRESULTs a gateway answers with (MS-TSGU 2.2.6), in the form with bit 31 set.
pub mod hresult {
    pub const S_OK: u32 = 0;
    pub const E_PROXY_INTERNALERROR: u32 = 0x8007_59D8;
    pub const E_PROXY_RAP_ACCESSDENIED: u32 = 0x8007_59DA;
    pub const E_PROXY_NAP_ACCESSDENIED: u32 = 0x8007_59DB;
    pub const E_PROXY_TS_CONNECTFAILED: u32 = 0x8007_59DD;
    pub const E_PROXY_MAXCONNECTIONSREACHED: u32 = 0x8007_59E6;
    pub const E_PROXY_CAPABILITYMISMATCH: u32 = 0x8007_59E9;
    pub const E_PROXY_SESSIONTIMEOUT: u32 = 0x8007_59F6;
    pub const E_PROXY_COOKIE_BADPACKET: u32 = 0x8007_59F7;
    pub const E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED: u32 = 0x8007_59F8;
    pub const E_PROXY_CONNECTIONABORTED: u32 = 0x8007_04D4;

    /// The name clients print for `code`.
    pub fn name(code: u32) -> &'static str {
        match code {
            S_OK => "S_OK",
            E_PROXY_INTERNALERROR => "E_PROXY_INTERNALERROR",
            E_PROXY_RAP_ACCESSDENIED => "E_PROXY_RAP_ACCESSDENIED",
            E_PROXY_NAP_ACCESSDENIED => "E_PROXY_NAP_ACCESSDENIED",
            E_PROXY_TS_CONNECTFAILED => "E_PROXY_TS_CONNECTFAILED",
            E_PROXY_MAXCONNECTIONSREACHED => "E_PROXY_MAXCONNECTIONSREACHED",
            E_PROXY_CAPABILITYMISMATCH => "E_PROXY_CAPABILITYMISMATCH",
            E_PROXY_SESSIONTIMEOUT => "E_PROXY_SESSIONTIMEOUT",
            E_PROXY_COOKIE_BADPACKET => "E_PROXY_COOKIE_BADPACKET",
            E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED => {
                "E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED"
            }
            E_PROXY_CONNECTIONABORTED => "E_PROXY_CONNECTIONABORTED",
            _ => "an unknown error",
        }
    }
}

/// One packet of the HTTP transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    HandshakeRequest {
        major: u8,
        minor: u8,
        client_version: u16,
        extended_auth: u16,
    },
    HandshakeResponse {
        error: u32,
        major: u8,
        minor: u8,
        server_version: u16,
        extended_auth: u16,
    },
    TunnelCreate {
        caps: u32,
        paa_cookie: Option<String>,
    },
    TunnelResponse {
        status: u32,
        tunnel_id: Option<u32>,
        caps: Option<u32>,
    },
    TunnelAuth {
        client_name: String,
    },
    TunnelAuthResponse {
        error: u32,
        redir_flags: Option<u32>,
        idle_timeout_minutes: Option<u32>,
    },
    ChannelCreate {
        resources: Vec<String>,
        alternates: Vec<String>,
        port: u16,
        protocol: u16,
    },
    ChannelResponse {
        error: u32,
        channel_id: Option<u32>,
    },
    Data(Bytes),
    ServiceMessage(String),
    Keepalive,
    CloseChannel {
        status: u32,
    },
    CloseChannelResponse {
        status: u32,
    },
    /// A packet this codec does not read (extended authentication, reauthentication, types
    /// MS-TSGU does not define); its body is skipped.
    Unsupported {
        kind: u16,
    },
}

/// Why bytes are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a packet's length {0} is less than its header")]
    BadLength(u32),
    #[error("a packet of {length} bytes is longer than the {limit} allowed")]
    TooLong { length: u32, limit: usize },
    #[error("packet type {kind:#x} is {length} bytes, too short for its fields")]
    Truncated { kind: u16, length: usize },
    #[error("packet type {0:#x} has a string that is not UTF-16")]
    BadString(u16),
    #[error("a DATA packet says {said} bytes and carries {carried}")]
    DataLength { said: usize, carried: usize },
}

impl Packet {
    /// The packet's type on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Packet::HandshakeRequest { .. } => HANDSHAKE_REQUEST,
            Packet::HandshakeResponse { .. } => HANDSHAKE_RESPONSE,
            Packet::TunnelCreate { .. } => TUNNEL_CREATE,
            Packet::TunnelResponse { .. } => TUNNEL_RESPONSE,
            Packet::TunnelAuth { .. } => TUNNEL_AUTH,
            Packet::TunnelAuthResponse { .. } => TUNNEL_AUTH_RESPONSE,
            Packet::ChannelCreate { .. } => CHANNEL_CREATE,
            Packet::ChannelResponse { .. } => CHANNEL_RESPONSE,
            Packet::Data(_) => DATA,
            Packet::ServiceMessage(_) => SERVICE_MESSAGE,
            Packet::Keepalive => KEEPALIVE,
            Packet::CloseChannel { .. } => CLOSE_CHANNEL,
            Packet::CloseChannelResponse { .. } => CLOSE_CHANNEL_RESPONSE,
            Packet::Unsupported { kind } => *kind,
        }
    }

    /// The packet on the wire, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = BytesMut::new();
        match self {
            Packet::HandshakeRequest {
                major,
                minor,
                client_version,
                extended_auth,
            } => {
                body.put_u8(*major);
                body.put_u8(*minor);
                body.put_u16_le(*client_version);
                body.put_u16_le(*extended_auth);
            }
            Packet::HandshakeResponse {
                error,
                major,
                minor,
                server_version,
                extended_auth,
            } => {
                body.put_u32_le(*error);
                body.put_u8(*major);
                body.put_u8(*minor);
                body.put_u16_le(*server_version);
                body.put_u16_le(*extended_auth);
            }
            Packet::TunnelCreate { caps, paa_cookie } => {
                body.put_u32_le(*caps);
                body.put_u16_le(if paa_cookie.is_some() {
                    FIELD_PAA_COOKIE
                } else {
                    0
                });
                body.put_u16_le(0);
                if let Some(cookie) = paa_cookie {
                    put_string(&mut body, cookie);
                }
            }
            Packet::TunnelResponse {
                status,
                tunnel_id,
                caps,
            } => {
                body.put_u16_le(0);
                body.put_u32_le(*status);
                let fields =
                    flag(tunnel_id.is_some(), FIELD_TUNNEL_ID) | flag(caps.is_some(), FIELD_CAPS);
                body.put_u16_le(fields);
                body.put_u16_le(0);
                if let Some(id) = tunnel_id {
                    body.put_u32_le(*id);
                }
                if let Some(caps) = caps {
                    body.put_u32_le(*caps);
                }
            }
            Packet::TunnelAuth { client_name } => {
                body.put_u16_le(0);
                put_string(&mut body, client_name);
            }
            Packet::TunnelAuthResponse {
                error,
                redir_flags,
                idle_timeout_minutes,
            } => {
                body.put_u32_le(*error);
                let fields = flag(redir_flags.is_some(), FIELD_REDIR_FLAGS)
                    | flag(idle_timeout_minutes.is_some(), FIELD_IDLE_TIMEOUT);
                body.put_u16_le(fields);
                body.put_u16_le(0);
                if let Some(flags) = redir_flags {
                    body.put_u32_le(*flags);
                }
                if let Some(minutes) = idle_timeout_minutes {
                    body.put_u32_le(*minutes);
                }
            }
            Packet::ChannelCreate {
                resources,
                alternates,
                port,
                protocol,
            } => {
                body.put_u8(resources.len().min(255) as u8);
                body.put_u8(alternates.len().min(255) as u8);
                body.put_u16_le(*port);
                body.put_u16_le(*protocol);
                for name in resources.iter().chain(alternates).take(510) {
                    put_string(&mut body, name);
                }
            }
            Packet::ChannelResponse { error, channel_id } => {
                body.put_u32_le(*error);
                body.put_u16_le(flag(channel_id.is_some(), FIELD_CHANNEL_ID));
                body.put_u16_le(0);
                if let Some(id) = channel_id {
                    body.put_u32_le(*id);
                }
            }
            Packet::Data(data) => return data_packet(data),
            Packet::ServiceMessage(text) => {
                let units: Vec<u16> = text.encode_utf16().take(32_000).collect();
                body.put_u16_le((units.len() * 2) as u16);
                for unit in units {
                    body.put_u16_le(unit);
                }
            }
            Packet::Keepalive | Packet::Unsupported { .. } => {}
            Packet::CloseChannel { status } | Packet::CloseChannelResponse { status } => {
                body.put_u32_le(*status);
            }
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.put_u16_le(self.kind());
        out.put_u16_le(0);
        out.put_u32_le((HEADER + body.len()) as u32);
        out.extend_from_slice(&body);
        out
    }
}

/// A DATA packet carrying `data` (at most [`MAX_DATA`] bytes; callers split longer runs).
pub fn data_packet(data: &[u8]) -> Vec<u8> {
    let data = &data[..data.len().min(MAX_DATA)];
    let mut out = Vec::with_capacity(HEADER + 2 + data.len());
    out.put_u16_le(DATA);
    out.put_u16_le(0);
    out.put_u32_le((HEADER + 2 + data.len()) as u32);
    out.put_u16_le(data.len() as u16);
    out.extend_from_slice(data);
    out
}

fn flag(set: bool, value: u16) -> u16 {
    if set {
        value
    } else {
        0
    }
}

/// A string as clients write it: a byte count, then UTF-16LE with a terminating NUL.
fn put_string(out: &mut BytesMut, text: &str) {
    let units: Vec<u16> = text.encode_utf16().take(32_000).collect();
    out.put_u16_le(((units.len() + 1) * 2) as u16);
    for unit in units {
        out.put_u16_le(unit);
    }
    out.put_u16_le(0);
}

/// Accumulates a byte stream and cuts it into packets.
#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    limit: usize,
}

impl Decoder {
    /// A decoder refusing packets longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Packets may now be longer (after the setup, DATA packets up to 64 KiB).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet a whole packet.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole packet, if the bytes so far hold one.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, Error> {
        if self.buffer.len() < HEADER {
            return Ok(None);
        }
        let length = u32::from_le_bytes([
            self.buffer[4],
            self.buffer[5],
            self.buffer[6],
            self.buffer[7],
        ]);
        if (length as usize) < HEADER {
            return Err(Error::BadLength(length));
        }
        if length as usize > self.limit {
            return Err(Error::TooLong {
                length,
                limit: self.limit,
            });
        }
        if self.buffer.len() < length as usize {
            return Ok(None);
        }
        let packet = self.buffer.split_to(length as usize).freeze();
        decode(&packet).map(Some)
    }
}

/// One whole packet (header included) as a [`Packet`].
pub fn decode(packet: &[u8]) -> Result<Packet, Error> {
    if packet.len() < HEADER {
        return Err(Error::BadLength(packet.len() as u32));
    }
    let kind = u16::from_le_bytes([packet[0], packet[1]]);
    let mut body = &packet[HEADER..];
    let truncated = Error::Truncated {
        kind,
        length: packet.len(),
    };
    let need = |body: &[u8], n: usize| {
        if body.len() < n {
            Err(truncated.clone())
        } else {
            Ok(())
        }
    };
    let packet = match kind {
        HANDSHAKE_REQUEST => {
            need(body, 6)?;
            Packet::HandshakeRequest {
                major: body.get_u8(),
                minor: body.get_u8(),
                client_version: body.get_u16_le(),
                extended_auth: body.get_u16_le(),
            }
        }
        HANDSHAKE_RESPONSE => {
            need(body, 10)?;
            Packet::HandshakeResponse {
                error: body.get_u32_le(),
                major: body.get_u8(),
                minor: body.get_u8(),
                server_version: body.get_u16_le(),
                extended_auth: body.get_u16_le(),
            }
        }
        TUNNEL_CREATE => {
            need(body, 8)?;
            let caps = body.get_u32_le();
            let fields = body.get_u16_le();
            body.advance(2);
            let paa_cookie = match fields & FIELD_PAA_COOKIE {
                0 => None,
                _ => Some(get_string(&mut body, kind, &truncated)?),
            };
            Packet::TunnelCreate { caps, paa_cookie }
        }
        TUNNEL_RESPONSE => {
            need(body, 10)?;
            body.advance(2);
            let status = body.get_u32_le();
            let fields = body.get_u16_le();
            body.advance(2);
            let tunnel_id = optional_u32(&mut body, fields & FIELD_TUNNEL_ID != 0, &truncated)?;
            let caps = optional_u32(&mut body, fields & FIELD_CAPS != 0, &truncated)?;
            Packet::TunnelResponse {
                status,
                tunnel_id,
                caps,
            }
        }
        TUNNEL_AUTH => {
            need(body, 2)?;
            body.advance(2);
            Packet::TunnelAuth {
                client_name: get_string(&mut body, kind, &truncated)?,
            }
        }
        TUNNEL_AUTH_RESPONSE => {
            need(body, 8)?;
            let error = body.get_u32_le();
            let fields = body.get_u16_le();
            body.advance(2);
            let redir_flags = optional_u32(&mut body, fields & FIELD_REDIR_FLAGS != 0, &truncated)?;
            let idle_timeout_minutes =
                optional_u32(&mut body, fields & FIELD_IDLE_TIMEOUT != 0, &truncated)?;
            Packet::TunnelAuthResponse {
                error,
                redir_flags,
                idle_timeout_minutes,
            }
        }
        CHANNEL_CREATE => {
            need(body, 6)?;
            let count = body.get_u8() as usize;
            let alternate_count = body.get_u8() as usize;
            let port = body.get_u16_le();
            let protocol = body.get_u16_le();
            let mut resources = Vec::with_capacity(count);
            for _ in 0..count {
                resources.push(get_string(&mut body, kind, &truncated)?);
            }
            let mut alternates = Vec::with_capacity(alternate_count);
            for _ in 0..alternate_count {
                alternates.push(get_string(&mut body, kind, &truncated)?);
            }
            Packet::ChannelCreate {
                resources,
                alternates,
                port,
                protocol,
            }
        }
        CHANNEL_RESPONSE => {
            need(body, 8)?;
            let error = body.get_u32_le();
            let fields = body.get_u16_le();
            body.advance(2);
            let channel_id = optional_u32(&mut body, fields & FIELD_CHANNEL_ID != 0, &truncated)?;
            Packet::ChannelResponse { error, channel_id }
        }
        DATA => {
            need(body, 2)?;
            let said = body.get_u16_le() as usize;
            if body.len() != said {
                return Err(Error::DataLength {
                    said,
                    carried: body.len(),
                });
            }
            Packet::Data(Bytes::copy_from_slice(body))
        }
        SERVICE_MESSAGE => {
            need(body, 2)?;
            let count = body.get_u16_le() as usize;
            need(body, count)?;
            Packet::ServiceMessage(utf16(&body[..count], kind)?)
        }
        KEEPALIVE => Packet::Keepalive,
        CLOSE_CHANNEL | CLOSE_CHANNEL_RESPONSE => {
            need(body, 4)?;
            let status = body.get_u32_le();
            match kind {
                CLOSE_CHANNEL => Packet::CloseChannel { status },
                _ => Packet::CloseChannelResponse { status },
            }
        }
        _ => Packet::Unsupported { kind },
    };
    Ok(packet)
}

/// An optional field's `u32`, when its flag is `set`.
fn optional_u32(body: &mut &[u8], set: bool, truncated: &Error) -> Result<Option<u32>, Error> {
    if !set {
        return Ok(None);
    }
    if body.len() < 4 {
        return Err(truncated.clone());
    }
    Ok(Some(body.get_u32_le()))
}

/// A counted UTF-16LE string; a terminating NUL is dropped.
fn get_string(body: &mut &[u8], kind: u16, truncated: &Error) -> Result<String, Error> {
    if body.len() < 2 {
        return Err(truncated.clone());
    }
    let count = body.get_u16_le() as usize;
    if body.len() < count {
        return Err(truncated.clone());
    }
    let text = utf16(&body[..count], kind)?;
    body.advance(count);
    Ok(text)
}

fn utf16(bytes: &[u8], kind: u16) -> Result<String, Error> {
    if !bytes.len().is_multiple_of(2) {
        return Err(Error::BadString(kind));
    }
    let mut units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    while units.last() == Some(&0) {
        units.pop();
    }
    String::from_utf16(&units).map_err(|_| Error::BadString(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FreeRDP 2.11's requests, byte for byte, read as it means them.
    #[test]
    fn freerdp_requests_decode() {
        let handshake = [1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 2, 0];
        assert_eq!(
            decode(&handshake),
            Ok(Packet::HandshakeRequest {
                major: 1,
                minor: 0,
                client_version: 0,
                extended_auth: EXTENDED_AUTH_PAA
            })
        );
        // `/gat:abc`: the cookie with its NUL.
        let mut create = vec![4, 0, 0, 0, 26, 0, 0, 0, 0x0D, 0, 0, 0, 1, 0, 0, 0, 8, 0];
        create.extend_from_slice(&[0x61, 0, 0x62, 0, 0x63, 0, 0, 0]);
        assert_eq!(
            decode(&create),
            Ok(Packet::TunnelCreate {
                caps: 0x0D,
                paa_cookie: Some("abc".into())
            })
        );
        let mut channel = vec![8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x3D, 0x0D, 3, 0, 6, 0];
        channel.extend_from_slice(&[0x68, 0, 0x31, 0, 0, 0]);
        channel[4] = channel.len() as u8;
        assert_eq!(
            decode(&channel),
            Ok(Packet::ChannelCreate {
                resources: vec!["h1".into()],
                alternates: vec![],
                port: 3389,
                protocol: PROTOCOL_RDP
            })
        );
    }

    /// What the gateway answers, byte for byte as the client's code reads it.
    #[test]
    fn responses_have_freerdps_layout() {
        let handshake = Packet::HandshakeResponse {
            error: 0,
            major: 1,
            minor: 0,
            server_version: 0,
            extended_auth: EXTENDED_AUTH_PAA,
        };
        assert_eq!(
            handshake.encode(),
            [2, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0]
        );
        let tunnel = Packet::TunnelResponse {
            status: 0,
            tunnel_id: Some(7),
            caps: Some(CAP_IDLE_TIMEOUT),
        };
        assert_eq!(
            tunnel.encode(),
            [5, 0, 0, 0, 26, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0]
        );
        let close = Packet::CloseChannel {
            status: hresult::E_PROXY_SESSIONTIMEOUT,
        };
        assert_eq!(close.encode().len(), 12, "the status is always there");
        assert_eq!(
            data_packet(b"xyz"),
            [10, 0, 0, 0, 13, 0, 0, 0, 3, 0, b'x', b'y', b'z']
        );
    }

    #[test]
    fn every_packet_survives_a_round_trip() {
        let packets = [
            Packet::HandshakeRequest {
                major: 1,
                minor: 0,
                client_version: 0,
                extended_auth: 2,
            },
            Packet::TunnelCreate {
                caps: 0x0D,
                paa_cookie: Some("tökén".into()),
            },
            Packet::TunnelCreate {
                caps: 0,
                paa_cookie: None,
            },
            Packet::TunnelResponse {
                status: hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
                tunnel_id: None,
                caps: Some(2),
            },
            Packet::TunnelAuth {
                client_name: "laptop".into(),
            },
            Packet::TunnelAuthResponse {
                error: 0,
                redir_flags: Some(REDIR_ENABLE_ALL),
                idle_timeout_minutes: Some(0),
            },
            Packet::ChannelCreate {
                resources: vec!["desk".into(), "10.0.0.5".into()],
                alternates: vec!["alt".into()],
                port: 3389,
                protocol: 3,
            },
            Packet::ChannelResponse {
                error: 0,
                channel_id: Some(1),
            },
            Packet::Data(Bytes::from_static(b"\x03\x00\x00\x13")),
            Packet::ServiceMessage("hello".into()),
            Packet::Keepalive,
            Packet::CloseChannel { status: 0 },
            Packet::CloseChannelResponse { status: 0 },
        ];
        let mut stream = Decoder::new(1 << 20);
        for packet in &packets {
            assert_eq!(decode(&packet.encode()).as_ref(), Ok(packet));
            stream.extend(&packet.encode());
        }
        for packet in &packets {
            assert_eq!(stream.next_packet().unwrap().as_ref(), Some(packet));
        }
        assert_eq!(stream.next_packet(), Ok(None));
    }

    #[test]
    fn bad_bytes_are_errors() {
        let mut d = Decoder::new(64);
        d.extend(&[1, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(d.next_packet(), Err(Error::BadLength(4)));
        let mut d = Decoder::new(64);
        d.extend(&[1, 0, 0, 0, 0, 1, 0, 0]);
        assert!(matches!(d.next_packet(), Err(Error::TooLong { .. })));
        // Half a packet waits for the rest.
        let mut d = Decoder::new(64);
        d.extend(&[1, 0, 0, 0, 14, 0, 0, 0, 1]);
        assert_eq!(d.next_packet(), Ok(None));
        assert!(matches!(
            decode(&[1, 0, 0, 0, 10, 0, 0, 0, 1, 0]),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode(&[10, 0, 0, 0, 12, 0, 0, 0, 5, 0, 1, 2]),
            Err(Error::DataLength {
                said: 5,
                carried: 2
            })
        ));
        // A cookie longer than the packet.
        assert!(
            decode(&[4, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 200, 0, 0x61, 0]).is_err()
        );
        // Unpaired surrogates are not text.
        assert_eq!(
            decode(&[6, 0, 0, 0, 14, 0, 0, 0, 0, 0, 2, 0, 0x00, 0xD8]),
            Err(Error::BadString(TUNNEL_AUTH))
        );
        assert_eq!(
            decode(&[0x0C, 0, 0, 0, 8, 0, 0, 0]),
            Ok(Packet::Unsupported {
                kind: REAUTH_MESSAGE
            })
        );
    }
}
