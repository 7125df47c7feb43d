//! ZGFX (RDP 8.0 bulk compression, MS-RDPEGFX 2.2.5 and 3.1.9.1) for the graphics channel:
//! our own compressor, because ironrdp-graphics' runs at about 3 MB/s (a hash map of
//! position lists per 3-byte prefix), a frame's budget three times over on the heavy
//! workload (`benches/zgfx.rs`).
//!
//! The design is zlib's fast levels on ZGFX's token set: a hash of the next 4 bytes picks
//! the head of a chain of earlier positions with the same hash (`head`, and `prev` as a ring
//! over the last [`CHAIN_WINDOW`] positions); at most [`CHAIN_DEPTH`] candidates are compared
//! and the longest match wins. The stream's bytes are kept in one buffer (the last
//! [`HISTORY`] bytes at least, the client's window), so a match is verified against real
//! bytes: a stale chain entry costs a comparison, never a wrong token. Matches never overlap
//! their source (length ≤ distance), as ironrdp's compressor does too: every decoder copies
//! them the same way.
//!
//! Each message is cut into segments of at most 65,535 bytes (3.1.9.1: no segment may
//! represent more); each goes compressed or, when that would not be smaller (noise, already
//! coded pixels), as it is — the client puts raw segments into its history too, and so does
//! the compressor, so both histories stay the same byte for byte.

/// The client's history window (MS-RDPEGFX 3.1.9.1: 2,500,000 bytes).
const HISTORY: usize = 2_500_000;
/// The longest distance a match may have (the window; the token table goes further).
const MAX_DISTANCE: usize = HISTORY - 1;
/// Bytes a segment may represent at most.
const SEGMENT: usize = 65_535;
/// Positions the hash chains reach back (a power of two). Matches further back come only
/// from a chain's head.
const CHAIN_WINDOW: usize = 1 << 20;
/// Candidates compared for each position.
const CHAIN_DEPTH: usize = 8;
/// A match this long ends the search.
const GOOD_ENOUGH: usize = 64;
const HASH_BITS: u32 = 16;
/// No position.
const NONE: u64 = u64::MAX;
/// The shortest match the hash finds.
const MIN_MATCH: usize = 4;

/// Segment descriptors and flags (MS-RDPEGFX 2.2.5.1, 2.2.5.3).
const SINGLE: u8 = 0xE0;
const MULTIPART: u8 = 0xE1;
const RDP8: u8 = 0x04;
const COMPRESSED: u8 = 0x20;

/// The channel's compressor: one per ZGFX stream, used for every message in sending order.
pub struct Zgfx {
    /// Stream bytes from absolute position `base` on (at least the last [`HISTORY`]).
    buf: Vec<u8>,
    base: u64,
    head: Vec<u64>,
    prev: Vec<u64>,
    /// Bytes in and out, for the log.
    pub plain: u64,
    pub wire: u64,
}

impl std::fmt::Debug for Zgfx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zgfx")
            .field("position", &self.end())
            .field("plain", &self.plain)
            .field("wire", &self.wire)
            .finish_non_exhaustive()
    }
}

impl Default for Zgfx {
    fn default() -> Self {
        Self::new()
    }
}

impl Zgfx {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            base: 0,
            head: vec![NONE; 1 << HASH_BITS],
            prev: vec![NONE; CHAIN_WINDOW],
            plain: 0,
            wire: 0,
        }
    }

    /// Absolute position of the stream's next byte.
    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// `data` as one message of the stream (single or multipart segments).
    pub fn compress_and_wrap(&mut self, data: &[u8]) -> Vec<u8> {
        let mut segments: Vec<(bool, Vec<u8>)> = Vec::new();
        for chunk in data.chunks(SEGMENT) {
            segments.push(self.segment(chunk));
        }
        let mut out = Vec::with_capacity(data.len() / 2 + 16);
        if segments.len() <= 1 {
            let (compressed, bytes) = segments.pop().unwrap_or((false, Vec::new()));
            out.push(SINGLE);
            out.push(flags(compressed));
            out.extend_from_slice(&bytes);
        } else {
            out.push(MULTIPART);
            out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            for (compressed, bytes) in &segments {
                out.extend_from_slice(&(bytes.len() as u32 + 1).to_le_bytes());
                out.push(flags(*compressed));
                out.extend_from_slice(bytes);
            }
        }
        self.plain += data.len() as u64;
        self.wire += out.len() as u64;
        out
    }

    /// One segment's payload: compressed when that is smaller, else `chunk` itself. Either
    /// way `chunk` joins the history.
    fn segment(&mut self, chunk: &[u8]) -> (bool, Vec<u8>) {
        let start = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut bits = Bits::with_capacity(chunk.len());
        let mut at = start;
        let end = self.buf.len();
        while at < end {
            let found = if end - at >= MIN_MATCH {
                self.longest(at, end)
            } else {
                None
            };
            match found {
                Some((distance, length)) if worth(distance, length) => {
                    bits.matched(distance, length);
                    for p in at..at + length {
                        self.insert(p);
                    }
                    at += length;
                }
                _ => {
                    if end - at >= MIN_MATCH {
                        self.insert(at);
                    }
                    bits.literal(self.buf[at]);
                    at += 1;
                }
            }
        }
        let compressed = bits.finish();
        self.trim();
        if compressed.len() < chunk.len() {
            (true, compressed)
        } else {
            (false, chunk.to_vec())
        }
    }

    /// Forgets what lies beyond the client's window, now and then (not for every segment).
    fn trim(&mut self) {
        if self.buf.len() > 2 * HISTORY {
            let drop = self.buf.len() - HISTORY;
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
    }

    fn hash(&self, at: usize) -> usize {
        let b = &self.buf[at..at + 4];
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
    }

    /// Records the position of `self.buf[at]` in its chain (the next 4 bytes must exist).
    fn insert(&mut self, at: usize) {
        if at + MIN_MATCH > self.buf.len() {
            return;
        }
        let h = self.hash(at);
        let pos = self.base + at as u64;
        self.prev[(pos as usize) & (CHAIN_WINDOW - 1)] = self.head[h];
        self.head[h] = pos;
    }

    /// The longest earlier occurrence of the bytes at `at` (up to `end`): (distance, length).
    fn longest(&self, at: usize, end: usize) -> Option<(usize, usize)> {
        let pos = self.base + at as u64;
        let limit = (end - at).min(SEGMENT);
        let mut candidate = self.head[self.hash(at)];
        let mut best: Option<(usize, usize)> = None;
        for depth in 0..CHAIN_DEPTH {
            if candidate == NONE || candidate < self.base || candidate >= pos {
                break;
            }
            let distance = (pos - candidate) as usize;
            if distance > MAX_DISTANCE || (depth > 0 && distance >= CHAIN_WINDOW) {
                break;
            }
            let from = at - distance;
            // No overlap: the match ends where it starts reading ours.
            let most = limit.min(distance);
            let best_len = best.map_or(MIN_MATCH - 1, |b| b.1);
            if most > best_len && self.buf[from + best_len] == self.buf[at + best_len] {
                let length = common(&self.buf[from..from + most], &self.buf[at..at + most]);
                if length > best_len {
                    best = Some((distance, length));
                    if length >= GOOD_ENOUGH || length == most {
                        break;
                    }
                }
            }
            if distance >= CHAIN_WINDOW {
                break;
            }
            candidate = self.prev[(candidate as usize) & (CHAIN_WINDOW - 1)];
        }
        best.filter(|b| b.1 >= MIN_MATCH)
    }
}

fn flags(compressed: bool) -> u8 {
    if compressed {
        RDP8 | COMPRESSED
    } else {
        RDP8
    }
}

/// How many leading bytes `a` and `b` share.
fn common(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let diff = x ^ y;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Whether a match costs fewer bits than its bytes as literals (9 bits each, mostly).
fn worth(distance: usize, length: usize) -> bool {
    let token = distance_token(distance);
    (token.prefix_bits + token.value_bits) as usize + length_bits(length) < 9 * length
}

/// The match token for `distance` (MS-RDPEGFX 2.2.5.2.1, the table's match rows).
#[derive(Debug, Clone, Copy)]
struct DistanceToken {
    prefix: u32,
    prefix_bits: u32,
    value_bits: u32,
    /// The smallest distance of the token's range (the value is the distance above it).
    base: usize,
}

fn distance_token(distance: usize) -> DistanceToken {
    const TOKENS: [(u32, u32, u32, usize); 12] = [
        (0b10001, 5, 5, 0),
        (0b10010, 5, 7, 32),
        (0b10011, 5, 9, 160),
        (0b10100, 5, 10, 672),
        (0b10101, 5, 12, 1_696),
        (0b101100, 6, 14, 5_792),
        (0b101101, 6, 15, 22_176),
        (0b1011100, 7, 18, 54_944),
        (0b1011101, 7, 20, 317_088),
        (0b10111100, 8, 20, 1_365_664),
        (0b10111101, 8, 21, 2_414_240),
        (0b101111100, 9, 22, 4_511_392),
    ];
    let (prefix, prefix_bits, value_bits, base) = TOKENS
        .into_iter()
        .take_while(|t| distance >= t.3)
        .last()
        .unwrap_or(TOKENS[0]);
    DistanceToken {
        prefix,
        prefix_bits,
        value_bits,
        base,
    }
}

/// Bits the length of a match takes (length 3: one bit; else a unary size and a value).
fn length_bits(length: usize) -> usize {
    if length == 3 {
        1
    } else {
        let size = length.ilog2() as usize - 1;
        size + 1 + size + 1
    }
}

/// The literal codes with their own token (MS-RDPEGFX 2.2.5.2.1): (byte, code, bits).
const LITERALS: [(u8, u32, u32); 25] = [
    (0x00, 0b11000, 5),
    (0x01, 0b11001, 5),
    (0x02, 0b110100, 6),
    (0x03, 0b110101, 6),
    (0xff, 0b110110, 6),
    (0x04, 0b1101110, 7),
    (0x05, 0b1101111, 7),
    (0x06, 0b1110000, 7),
    (0x07, 0b1110001, 7),
    (0x08, 0b1110010, 7),
    (0x09, 0b1110011, 7),
    (0x0a, 0b1110100, 7),
    (0x0b, 0b1110101, 7),
    (0x3a, 0b1110110, 7),
    (0x3b, 0b1110111, 7),
    (0x3c, 0b1111000, 7),
    (0x3d, 0b1111001, 7),
    (0x3e, 0b1111010, 7),
    (0x3f, 0b1111011, 7),
    (0x40, 0b1111100, 7),
    (0x80, 0b1111101, 7),
    (0x0c, 0b11111100, 8),
    (0x38, 0b11111101, 8),
    (0x39, 0b11111110, 8),
    (0x66, 0b11111111, 8),
];

/// Each byte's literal token: (code, bits); bytes without one are `0` and 8 bits (9 bits).
static LITERAL_CODES: std::sync::LazyLock<[(u32, u32); 256]> = std::sync::LazyLock::new(|| {
    let mut table = [(0, 9); 256];
    for (i, entry) in table.iter_mut().enumerate() {
        entry.0 = i as u32;
    }
    for (byte, code, bits) in LITERALS {
        table[usize::from(byte)] = (code, bits);
    }
    table
});

/// A bit stream, most significant bit first.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    /// Bits in `acc` (fewer than 8 after each write).
    n: u32,
}

impl Bits {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            out: Vec::with_capacity(bytes / 2 + 8),
            acc: 0,
            n: 0,
        }
    }

    fn put(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32);
        self.acc = (self.acc << bits) | u64::from(value) & ((1u64 << bits) - 1);
        self.n += bits;
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
    }

    fn literal(&mut self, byte: u8) {
        let (code, bits) = LITERAL_CODES[usize::from(byte)];
        self.put(code, bits);
    }

    fn matched(&mut self, distance: usize, length: usize) {
        let token = distance_token(distance);
        self.put(token.prefix, token.prefix_bits);
        self.put((distance - token.base) as u32, token.value_bits);
        if length == 3 {
            self.put(0, 1);
        } else {
            let size = length.ilog2() - 1;
            // `size` ones, a zero, then `size + 1` bits of the length above 2^(size+1).
            self.put(((1u32 << size) - 1) << 1, size + 1);
            self.put((length - (1 << (size + 1))) as u32, size + 1);
        }
    }

    /// The bytes, and a last byte with the number of unused bits in the one before it.
    fn finish(mut self) -> Vec<u8> {
        let unused = if self.n > 0 {
            let unused = 8 - self.n;
            self.put(0, unused);
            unused
        } else {
            0
        };
        self.out.push(unused as u8);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use ironrdp_graphics::zgfx::Decompressor;

    use super::*;

    /// Pseudo-random bytes (xorshift), reproducible.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Something like planar screen data: runs, repeated rows with small changes, text-like
    /// patterns, some noise.
    fn screenish(len: usize, seed: u64) -> Vec<u8> {
        let n = noise(len, seed);
        let mut out = Vec::with_capacity(len);
        let row: Vec<u8> = (0..640).map(|i| ((i * 7) % 23) as u8 + 0x30).collect();
        while out.len() < len {
            let k = n[out.len() % n.len()] % 4;
            match k {
                0 => out.extend(std::iter::repeat_n(n[out.len()], 40)),
                1 => out.extend_from_slice(&row),
                2 => {
                    let at = out.len();
                    out.extend_from_slice(&n[at..(at + 100).min(len)]);
                }
                _ => {
                    let mut r = row.clone();
                    r[usize::from(k) * 10] ^= 0x55;
                    out.extend_from_slice(&r);
                }
            }
        }
        out.truncate(len);
        out
    }

    fn roundtrip(messages: &[Vec<u8>]) -> Zgfx {
        let mut z = Zgfx::new();
        let mut d = Decompressor::new();
        for (i, m) in messages.iter().enumerate() {
            let wire = z.compress_and_wrap(m);
            let mut plain = Vec::new();
            d.decompress(&wire, &mut plain)
                .unwrap_or_else(|e| panic!("message {i}: {e:?}"));
            assert!(
                plain == *m,
                "message {i} ({} bytes) decodes differently",
                m.len()
            );
        }
        z
    }

    #[test]
    fn every_message_decodes_to_itself() {
        let mut messages = vec![
            Vec::new(),
            vec![0],
            vec![1, 2, 3],
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
            (0..=255u8).collect(),
            (0..=255u8).cycle().take(5000).collect(),
        ];
        for seed in 1..6 {
            messages.push(screenish(1 + seed as usize * 37_000, seed));
            messages.push(noise(seed as usize * 20_000, seed));
        }
        // Long enough for multipart messages, and for some lengths of every size class.
        messages.push(screenish(300_000, 99));
        let z = roundtrip(&messages);
        assert!(z.wire < z.plain, "{z:?}");
    }

    /// Matches half a megabyte back, and a stream longer than the window twice over, so the
    /// buffer is trimmed while the client's history wraps around.
    #[test]
    fn long_streams_and_far_matches_decode() {
        let block = screenish(200_000, 7);
        let mut z = Zgfx::new();
        let mut d = Decompressor::new();
        let mut send = |m: &[u8]| {
            let wire = z.compress_and_wrap(m);
            let mut plain = Vec::new();
            d.decompress(&wire, &mut plain).unwrap();
            assert!(plain == m);
            wire.len()
        };
        send(&block);
        for i in 0..100u64 {
            send(&noise(60_000, i + 100));
            if i % 5 == 4 {
                // Seen ~500 kB ago: it comes back much smaller.
                let wire = send(&block);
                assert!(wire < block.len() / 4, "{wire}");
            }
        }
        assert!(z.plain > 2 * HISTORY as u64 && z.base > 0, "{z:?}");
    }

    /// Noise does not grow: it goes as raw segments (at most the headers more).
    #[test]
    fn incompressible_data_goes_raw() {
        let mut z = Zgfx::new();
        let data = noise(200_000, 3);
        let wire = z.compress_and_wrap(&data);
        assert!(wire.len() <= data.len() + 7 + 4 * 5, "{}", wire.len());
        // And what is compressible shrinks a lot.
        let text = screenish(200_000, 4);
        let wire = z.compress_and_wrap(&text);
        assert!(wire.len() < text.len() / 4, "{}", wire.len());
    }

    #[test]
    fn token_tables_match_the_specification() {
        for (distance, base) in [
            (1, 0),
            (31, 0),
            (32, 32),
            (5_792, 5_792),
            (2_499_999, 2_414_240),
        ] {
            let token = distance_token(distance);
            assert_eq!(token.base, base);
            assert!(distance - base < 1 << token.value_bits);
        }
        for length in [3usize, 4, 7, 8, 255, 256, 65_535] {
            let mut b = Bits::with_capacity(8);
            b.matched(1, length);
            let bits = b.out.len() * 8 + b.n as usize;
            assert_eq!(bits, 5 + 5 + length_bits(length), "{length}");
        }
    }
}
