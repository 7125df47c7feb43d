//! The WebSocket framing (RFC 6455 §5) the HTTP transport's WebSocket form rides on, both
//! roles: a server writes unmasked frames and reads masked ones, a client the reverse.
//!
//! Why not a WebSocket library: FreeRDP 2.11 opens the WebSocket with the method
//! `RDG_OUT_DATA` and a `Sec-WebSocket-Key` of 15 characters that are not base64, which
//! libraries refuse before any frame; the gateway does that handshake itself ([`accept_key`])
//! and needs nothing of the framing but binary frames, ping, pong and close.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use sha1::Digest as _;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for `key`, hashed exactly as sent (FreeRDP's is not base64, and it
/// checks this value).
pub fn accept_key(key: &str) -> String {
    let mut hash = sha1::Sha1::new();
    hash.update(key.trim().as_bytes());
    hash.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(hash.finalize())
}

/// One frame read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Payload of a binary frame or of its continuation.
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// A close, with its status if it had one.
    Close(Option<u16>),
}

/// Why bytes are not frames the transport accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a WebSocket frame of {0} bytes is longer than allowed")]
    TooLong(u64),
    #[error("a WebSocket text frame (the transport is binary)")]
    Text,
    #[error("WebSocket opcode {0:#x} is not defined")]
    BadOpcode(u8),
    #[error("a fragmented WebSocket control frame")]
    FragmentedControl,
}

/// Accumulates bytes and cuts them into frames, unmasking masked ones.
#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    limit: usize,
}

impl Decoder {
    /// A decoder refusing frames whose payload is longer than `limit`.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0F);
        let masked = b[1] & 0x80 != 0;
        let (length, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if length > self.limit as u64 {
            return Err(Error::TooLong(length));
        }
        if opcode >= OP_CLOSE && (!fin || length > 125) {
            return Err(Error::FragmentedControl);
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        let end = at + length as usize;
        if b.len() < end {
            return Ok(None);
        }
        self.buffer.advance(at);
        let mut payload = self.buffer.split_to(length as usize);
        if let Some(key) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        let payload = payload.freeze();
        match opcode {
            OP_BINARY | OP_CONTINUATION => Ok(Some(Frame::Binary(payload))),
            OP_PING => Ok(Some(Frame::Ping(payload))),
            OP_PONG => Ok(Some(Frame::Pong)),
            OP_CLOSE => {
                let status =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                Ok(Some(Frame::Close(status)))
            }
            OP_TEXT => Err(Error::Text),
            other => Err(Error::BadOpcode(other)),
        }
    }
}

/// A whole frame (FIN set) with `opcode` and `payload`, masked with `mask` (a client's
/// frames) or not (a server's).
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FreeRDP 2.11's kind of key (15 characters in '@'..='_'), and the RFC's example.
    #[test]
    fn accept_keys() {
        assert_eq!(
            accept_key("ABCDEFGHIJKLMNO"),
            "E5g2ad2v3Z8tg2Zo0jIV0ea3oRI="
        );
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_of_every_length_survive_a_round_trip_masked_or_not() {
        for n in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut d = Decoder::new(1 << 20);
                let bytes = frame(OP_BINARY, &payload, mask);
                // Byte by byte: nothing until the last one.
                d.extend(&bytes[..bytes.len() - 1]);
                assert_eq!(d.next_frame(), Ok(None));
                d.extend(&bytes[bytes.len() - 1..]);
                assert_eq!(
                    d.next_frame(),
                    Ok(Some(Frame::Binary(payload.clone().into())))
                );
                assert_eq!(d.next_frame(), Ok(None));
            }
        }
    }

    #[test]
    fn control_frames_and_refusals() {
        let mut d = Decoder::new(1024);
        d.extend(&frame(OP_PING, b"hi", Some([9, 9, 9, 9])));
        d.extend(&frame(OP_PONG, b"", None));
        d.extend(&frame(OP_CLOSE, &1000u16.to_be_bytes(), None));
        assert_eq!(
            d.next_frame(),
            Ok(Some(Frame::Ping(Bytes::from_static(b"hi"))))
        );
        assert_eq!(d.next_frame(), Ok(Some(Frame::Pong)));
        assert_eq!(d.next_frame(), Ok(Some(Frame::Close(Some(1000)))));
        let mut d = Decoder::new(1024);
        d.extend(&frame(OP_TEXT, b"x", None));
        assert_eq!(d.next_frame(), Err(Error::Text));
        let mut d = Decoder::new(1024);
        d.extend(&frame(OP_BINARY, &[0; 2000], None));
        assert_eq!(d.next_frame(), Err(Error::TooLong(2000)));
        let mut d = Decoder::new(1024);
        d.extend(&[0x03, 0x00]);
        assert_eq!(d.next_frame(), Err(Error::BadOpcode(3)));
        let mut d = Decoder::new(1024);
        d.extend(&[0x09, 0x00]);
        assert_eq!(d.next_frame(), Err(Error::FragmentedControl));
    }
}
