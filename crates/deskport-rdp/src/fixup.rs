//! Client compatibility on the wire, between TLS and the connection sequence.
//!
//! rdesktop 1.9 sends Confirm Active, Synchronize, Control(Cooperate) and Control(Request
//! Control), then *waits* for the server's Synchronize, Control(Cooperate) and Control(Granted
//! Control) before it sends its Font List; the acceptor's finalization (MS-RDPBCGR 1.3.1.1,
//! "connection finalization") waits for the Font List before it sends anything. Windows answers
//! each client PDU as it arrives. [`Fixups`] breaks the deadlock by handing the acceptor a
//! synthetic Font List right after the client's Request Control, when the client is one that
//! waits: recognised by rdesktop's byte-swapped GCC channel options (it writes
//! `CHANNEL_DEF.options` big-endian), or, for any client, when no PDU follows Request Control
//! within [`QUIET`]. The client's real Font List arrives later in the session and is ignored
//! there.
//!
//! Only the connection sequence is inspected; afterwards the wrapper passes bytes through.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ironrdp_pdu::mcs::SendDataRequest;
use ironrdp_pdu::rdp::finalization_messages::{ControlAction, FontPdu};
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::x224::X224;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a client may stay silent after Request Control before it is taken for one that
/// waits for the server.
pub const QUIET: Duration = Duration::from_millis(150);

/// After this many frames without reaching finalization, stop inspecting.
const MAX_FRAMES: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Cutting frames, looking for the Connect Initial and Request Control.
    Watching,
    /// Request Control seen; a Font List is injected if the client stays quiet.
    AfterRequestControl,
    /// Pass bytes through.
    Done,
}

/// A stream wrapper that injects a Font List for clients that wait for the server.
pub struct Fixups<S> {
    inner: S,
    pending: Vec<u8>,
    ready: Vec<u8>,
    ready_pos: usize,
    phase: Phase,
    frames: u32,
    waits_for_server: bool,
    font_list: Option<Vec<u8>>,
    /// After Request Control: when the client's silence counts as waiting for the server.
    quiet_until: Option<tokio::time::Instant>,
    /// The timer for `quiet_until`, made when first polled (in the runtime: cutting frames
    /// needs none, so the fuzzing oracle can run it bare).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    eof: bool,
}

impl<S> std::fmt::Debug for Fixups<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixups")
            .field("phase", &self.phase)
            .field("waits_for_server", &self.waits_for_server)
            .finish_non_exhaustive()
    }
}

impl<S> Fixups<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            phase: Phase::Watching,
            frames: 0,
            waits_for_server: false,
            font_list: None,
            quiet_until: None,
            timer: None,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the client was recognised as one that waits for the server (rdesktop).
    pub fn waits_for_server(&self) -> bool {
        self.waits_for_server
    }

    /// Moves complete frames from `pending` to `ready`, inspecting them.
    fn cut_frames(&mut self) {
        loop {
            if self.phase == Phase::Done {
                self.ready.append(&mut self.pending);
                return;
            }
            let Some(len) = frame_len(&self.pending) else {
                return;
            };
            if len == 0 {
                // Not a frame we know how to delimit: stop inspecting.
                self.phase = Phase::Done;
                continue;
            }
            if self.pending.len() < len {
                return;
            }
            let frame: Vec<u8> = self.pending.drain(..len).collect();
            self.frames += 1;
            if self.phase == Phase::AfterRequestControl {
                // The client went on by itself: it does not wait for the server.
                self.phase = Phase::Done;
                self.quiet_until = None;
                self.timer = None;
                self.font_list = None;
            } else if is_connect_initial(&frame) {
                self.waits_for_server = has_swapped_channel_options(&frame);
                if self.waits_for_server {
                    tracing::debug!("Client writes channel options big-endian (rdesktop); will answer finalization early");
                }
            } else if let Some(font_list) = request_control_font_list(&frame) {
                if self.waits_for_server {
                    self.ready.extend_from_slice(&frame);
                    self.ready.extend_from_slice(&font_list);
                    self.phase = Phase::Done;
                    continue;
                }
                self.phase = Phase::AfterRequestControl;
                self.font_list = Some(font_list);
                self.quiet_until = Some(tokio::time::Instant::now() + QUIET);
            }
            if self.frames >= MAX_FRAMES {
                self.phase = Phase::Done;
            }
            self.ready.extend_from_slice(&frame);
        }
    }

    fn take_ready(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.ready_pos >= self.ready.len() {
            return false;
        }
        let n = buf.remaining().min(self.ready.len() - self.ready_pos);
        buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
        self.ready_pos += n;
        if self.ready_pos == self.ready.len() {
            self.ready.clear();
            self.ready_pos = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fixups<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.take_ready(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.phase == Phase::Done && this.pending.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // Release whatever is left, then report the end.
                this.ready.append(&mut this.pending);
                if this.take_ready(buf) {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.pending.extend_from_slice(read.filled());
                        this.cut_frames();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(deadline) = this.quiet_until {
                        let timer = this
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        if timer.as_mut().poll(cx).is_ready() {
                            tracing::debug!(
                                "Client silent after Request Control; injecting a Font List"
                            );
                            this.timer = None;
                            this.quiet_until = None;
                            this.waits_for_server = true;
                            if let Some(font_list) = this.font_list.take() {
                                this.ready.extend_from_slice(&font_list);
                            }
                            this.phase = Phase::Done;
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fixups<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The length of the frame at the start of `bytes`: `None` when more bytes are needed to
/// tell, `Some(0)` when it is no frame this module knows.
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    let first = *bytes.first()?;
    match first {
        // TPKT (RFC 1006): version 3, reserved, length (big-endian, including the header).
        0x03 => {
            let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
            Some(if len < 4 { 0 } else { len })
        }
        // A CredSSP TSRequest: DER SEQUENCE.
        0x30 => {
            let b1 = *bytes.get(1)?;
            Some(match b1 {
                n if n < 0x80 => 2 + usize::from(n),
                0x81 => 3 + usize::from(*bytes.get(2)?),
                0x82 => 4 + usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
                _ => 0,
            })
        }
        // Fast-path input (action bits 00): length in one or two bytes (MS-RDPBCGR 2.2.8.1.2).
        b if b & 0x03 == 0 => {
            let b1 = *bytes.get(1)?;
            let len = if b1 & 0x80 != 0 {
                usize::from(u16::from_be_bytes([b1 & 0x7f, *bytes.get(2)?]))
            } else {
                usize::from(b1)
            };
            Some(if len < 2 { 0 } else { len })
        }
        _ => Some(0),
    }
}

/// TPKT, X.224 Data, then the BER tag of MCS Connect-Initial ([APPLICATION 101]).
fn is_connect_initial(frame: &[u8]) -> bool {
    frame.len() > 9
        && frame[0] == 0x03
        && frame[4..7] == [0x02, 0xF0, 0x80]
        && frame[7..9] == [0x7F, 0x65]
}

/// Whether the client network data of a Connect-Initial holds a channel whose options only
/// make sense big-endian (rdesktop's `out_uint32_be(flags)`; MS-RDPBCGR 2.2.1.3.4.1 says
/// little-endian). The options are a set of high bits, so little-endian values from rdesktop
/// show unknown low bits.
pub fn has_swapped_channel_options(frame: &[u8]) -> bool {
    // The GCC Conference Create Request carries the H.221 key "Duca", then a PER length, then
    // the client data blocks (TS_UD_HEADER type u16 LE, length u16 LE).
    let Some(pos) = frame.windows(4).position(|w| w == b"Duca") else {
        return false;
    };
    let mut i = pos + 4;
    let Some(&b0) = frame.get(i) else {
        return false;
    };
    let len = if b0 & 0x80 != 0 {
        let Some(&b1) = frame.get(i + 1) else {
            return false;
        };
        i += 2;
        (usize::from(b0 & 0x7f) << 8) | usize::from(b1)
    } else {
        i += 1;
        usize::from(b0)
    };
    let end = (i + len).min(frame.len());
    const KNOWN: u32 = 0xFFF0_0000;
    while i + 4 <= end {
        let ty = u16::from_le_bytes([frame[i], frame[i + 1]]);
        let block = usize::from(u16::from_le_bytes([frame[i + 2], frame[i + 3]]));
        if block < 4 || i + block > end {
            return false;
        }
        if ty == 0xC003 && block >= 8 {
            let count = u32::from_le_bytes([frame[i + 4], frame[i + 5], frame[i + 6], frame[i + 7]])
                as usize;
            for k in 0..count.min(31) {
                let o = i + 8 + k * 12 + 8;
                if o + 4 > i + block {
                    break;
                }
                let le = u32::from_le_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]]);
                if le & !KNOWN != 0 && le.swap_bytes() & !KNOWN == 0 {
                    return true;
                }
            }
        }
        i += block;
    }
    false
}

/// If `frame` is a client Control(Request Control) PDU, a Font List PDU from the same
/// initiator on the same channel and share.
fn request_control_font_list(frame: &[u8]) -> Option<Vec<u8>> {
    let request: X224<SendDataRequest<'_>> = ironrdp_core::decode(frame).ok()?;
    let request = request.0;
    let header: ShareControlHeader = ironrdp_core::decode(request.user_data.as_ref()).ok()?;
    let ShareControlPdu::Data(data) = header.share_control_pdu else {
        return None;
    };
    let ShareDataPdu::Control(control) = data.share_data_pdu else {
        return None;
    };
    if control.action != ControlAction::RequestControl {
        return None;
    }
    let mut buf = ironrdp_core::WriteBuf::new();
    ironrdp_pdu::rdp::headers::encode_share_data(
        request.initiator_id,
        request.channel_id,
        header.share_id,
        ShareDataPdu::FontList(FontPdu::default()),
        &mut buf,
    )
    .ok()?;
    Some(buf.into_inner())
}

/// The fuzzing oracle (see `fuzz/`): feeds `data` to the frame cutter in chunks whose sizes
/// come from the data itself, and checks that bytes are only ever passed on in order, with
/// nothing lost or invented besides a Font List the wrapper injects.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let _ = frame_len(data);
    let _ = has_swapped_channel_options(data);
    let _ = request_control_font_list(data);
    let mut fixups = Fixups::new(());
    let mut fed = 0;
    let mut step = 1;
    while fed < data.len() {
        step = (step * 7 + usize::from(data[fed])) % 97 + 1;
        let end = (fed + step).min(data.len());
        fixups.pending.extend_from_slice(&data[fed..end]);
        fixups.cut_frames();
        fed = end;
    }
    let mut passed = fixups.ready.clone();
    passed.extend_from_slice(&fixups.pending);
    if passed.len() == data.len() {
        assert_eq!(passed, data, "bytes were reordered or changed");
    } else {
        // Only an injected Font List may add bytes, and only after Request Control.
        assert!(passed.len() > data.len(), "bytes were lost");
        assert!(fixups.waits_for_server || fixups.phase == Phase::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(&[]), None);
        assert_eq!(frame_len(&[0x03, 0x00]), None);
        assert_eq!(frame_len(&[0x03, 0x00, 0x00, 0x13]), Some(0x13));
        assert_eq!(frame_len(&[0x30, 0x05]), Some(7));
        assert_eq!(frame_len(&[0x30, 0x82, 0x01, 0x00]), Some(0x104));
        assert_eq!(frame_len(&[0x00, 0x85, 0x10]), Some(0x510));
        assert_eq!(frame_len(&[0x44, 0x0a]), Some(10));
        assert_eq!(frame_len(&[0x01]), Some(0));
        assert_eq!(frame_len(&[0x03, 0x00, 0x00, 0x02]), Some(0));
    }

    /// A minimal Connect-Initial: just enough around "Duca" for the scan.
    fn connect_initial(options: [u8; 4]) -> Vec<u8> {
        let mut net = vec![0x03, 0xC0, 20, 0, 1, 0, 0, 0];
        net.extend_from_slice(b"cliprdr\0");
        net.extend_from_slice(&options);
        let mut f = vec![0x03, 0x00, 0x00, 0x00, 0x02, 0xF0, 0x80, 0x7F, 0x65];
        f.extend_from_slice(b"Duca");
        f.push(net.len() as u8);
        f.extend_from_slice(&net);
        let len = f.len() as u16;
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn rdesktops_big_endian_channel_options_are_recognised() {
        // rdesktop: 0xc0a00000 written big-endian.
        assert!(has_swapped_channel_options(&connect_initial([
            0xc0, 0xa0, 0x00, 0x00
        ])));
        // Everyone else: little-endian.
        assert!(!has_swapped_channel_options(&connect_initial([
            0x00, 0x00, 0xa0, 0xc0
        ])));
        assert!(is_connect_initial(&connect_initial([0, 0, 0, 0x80])));
    }
}
