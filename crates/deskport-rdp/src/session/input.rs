//! What the client sends during the session: fast-path and slow-path input (keyboard,
//! Unicode, mouse, wheel) translated into desktop [`Input`]; data on the virtual channels
//! handed to their modules; the client's acknowledgement of a frame (TS_FRAME_ACKNOWLEDGE_PDU,
//! MS-RDPBCGR 2.2.12.1, for the screen's flow control); the client's shutdown. What cannot be
//! decoded is logged (debug) and ignored.

use deskport_desktop::{Button, Desktop, Input};
use ironrdp_pdu::input::fast_path::{FastPathInput, FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::mouse_x::PointerXFlags;
use ironrdp_pdu::input::scan_code;
use ironrdp_pdu::input::{InputEvent, MousePdu};
use ironrdp_pdu::mcs::{McsMessage, SendDataRequest};
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;

use super::End;
use crate::channels::Channels;

/// What a client PDU means for the session loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or ignored); the session goes on.
    Continue,
    /// The client acknowledged frame `id` (and every frame before it).
    FrameAcknowledged(u32),
    /// The session ends.
    End(End),
}

/// Applies the PDUs the client sent while the server was busy with the connection sequence
/// (slow-path), telling `acknowledged` of frame acknowledgements; `Some` when one ends the
/// session.
pub fn backlog(
    desktop: &dyn Desktop,
    io_channel_id: u16,
    pdus: &[Vec<u8>],
    channels: &mut Channels,
    out: &mut Vec<u8>,
    acknowledged: &mut dyn FnMut(u32),
) -> anyhow::Result<Option<End>> {
    for pdu in pdus {
        match handle(desktop, io_channel_id, Action::X224, pdu, channels, out)? {
            Outcome::Continue => {}
            Outcome::FrameAcknowledged(id) => acknowledged(id),
            Outcome::End(end) => return Ok(Some(end)),
        }
    }
    Ok(None)
}

/// The frame a slow-path `pdu` acknowledges, if it is a Frame Acknowledge PDU (for the
/// connection sequence, which does not expect one).
pub fn frame_acknowledgement(io_channel_id: u16, pdu: &[u8]) -> Option<u32> {
    let message: X224<McsMessage<'_>> = ironrdp_core::decode(pdu).ok()?;
    let McsMessage::SendDataRequest(request) = message.0 else {
        return None;
    };
    if request.channel_id != io_channel_id {
        return None;
    }
    let header: ShareControlHeader = ironrdp_core::decode(request.user_data.as_ref()).ok()?;
    match header.share_control_pdu {
        ShareControlPdu::Data(data) => match data.share_data_pdu {
            ShareDataPdu::FrameAcknowledge(ack) => Some(ack.frame_id),
            _ => None,
        },
        _ => None,
    }
}

/// Applies one client PDU.
pub fn handle(
    desktop: &dyn Desktop,
    io_channel_id: u16,
    action: Action,
    pdu: &[u8],
    channels: &mut Channels,
    out: &mut Vec<u8>,
) -> anyhow::Result<Outcome> {
    match action {
        Action::FastPath => {
            let input: FastPathInput = match ironrdp_core::decode(pdu) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable fast-path input ignored");
                    return Ok(Outcome::Continue);
                }
            };
            for event in input.input_events() {
                for i in fast_path_event(event) {
                    desktop.input(i)?;
                }
            }
            Ok(Outcome::Continue)
        }
        Action::X224 => {
            let message: X224<McsMessage<'_>> = match ironrdp_core::decode(pdu) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable PDU ignored");
                    return Ok(Outcome::Continue);
                }
            };
            match message.0 {
                McsMessage::DisconnectProviderUltimatum(_) => Ok(Outcome::End(End::Client)),
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) if channel_id == io_channel_id => share_data(desktop, user_data.as_ref()),
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) => {
                    channels.process(channel_id, user_data.as_ref(), out);
                    Ok(Outcome::Continue)
                }
                _ => Ok(Outcome::Continue),
            }
        }
    }
}

/// A PDU on the I/O channel: slow-path input, a frame acknowledgement, a shutdown request.
fn share_data(desktop: &dyn Desktop, user_data: &[u8]) -> anyhow::Result<Outcome> {
    let header = match ironrdp_core::decode::<ShareControlHeader>(user_data) {
        Ok(header) => header,
        Err(e) => {
            // A malformed Frame Acknowledge (a frame id cut short, say) ends up here too.
            tracing::debug!(error = %e, "Undecodable share control PDU ignored");
            return Ok(Outcome::Continue);
        }
    };
    let ShareControlPdu::Data(data) = header.share_control_pdu else {
        return Ok(Outcome::Continue);
    };
    match data.share_data_pdu {
        ShareDataPdu::Input(input) => {
            for event in &input.0 {
                for i in slow_path_event(event) {
                    desktop.input(i)?;
                }
            }
            Ok(Outcome::Continue)
        }
        ShareDataPdu::FrameAcknowledge(ack) => Ok(Outcome::FrameAcknowledged(ack.frame_id)),
        ShareDataPdu::ShutdownRequest => Ok(Outcome::End(End::Client)),
        _ => Ok(Outcome::Continue),
    }
}

fn key(scancode: u16, extended: bool, down: bool) -> Input {
    Input::Key {
        scancode: (scancode & 0xff) as u8,
        extended,
        down,
    }
}

fn fast_path_event(event: &FastPathInputEvent) -> Vec<Input> {
    match event {
        FastPathInputEvent::KeyboardEvent(flags, code) => vec![key(
            u16::from(*code),
            flags.contains(KeyboardFlags::EXTENDED),
            !flags.contains(KeyboardFlags::RELEASE),
        )],
        FastPathInputEvent::UnicodeKeyboardEvent(flags, unit) => vec![Input::Unicode {
            unit: *unit,
            down: !flags.contains(KeyboardFlags::RELEASE),
        }],
        FastPathInputEvent::MouseEvent(m) => mouse(m),
        FastPathInputEvent::MouseEventEx(m) => {
            let down = m.flags.contains(PointerXFlags::DOWN);
            let button = if m.flags.contains(PointerXFlags::BUTTON1) {
                Button::X1
            } else {
                Button::X2
            };
            vec![
                Input::Move {
                    x: m.x_position,
                    y: m.y_position,
                },
                Input::Button { button, down },
            ]
        }
        _ => Vec::new(),
    }
}

fn slow_path_event(event: &InputEvent) -> Vec<Input> {
    match event {
        InputEvent::ScanCode(s) => vec![key(
            s.key_code,
            s.flags.contains(scan_code::KeyboardFlags::EXTENDED),
            !s.flags.contains(scan_code::KeyboardFlags::RELEASE),
        )],
        InputEvent::Unicode(u) => vec![Input::Unicode {
            unit: u.unicode_code,
            down: !u
                .flags
                .contains(ironrdp_pdu::input::unicode::KeyboardFlags::RELEASE),
        }],
        InputEvent::Mouse(m) => mouse(m),
        InputEvent::MouseX(m) => fast_path_event(&FastPathInputEvent::MouseEventEx(*m)),
        _ => Vec::new(),
    }
}

/// A mouse PDU (MS-RDPBCGR 2.2.8.1.1.3.1.1.3): a move, a button, or a wheel turn.
fn mouse(m: &MousePdu) -> Vec<Input> {
    let f = m.flags;
    if f.intersects(PointerFlags::VERTICAL_WHEEL | PointerFlags::HORIZONTAL_WHEEL) {
        let amount = i32::from(m.number_of_wheel_rotation_units);
        let (vertical, horizontal) = if f.contains(PointerFlags::HORIZONTAL_WHEEL) {
            (0, amount)
        } else {
            (amount, 0)
        };
        return vec![Input::Wheel {
            vertical,
            horizontal,
        }];
    }
    let mut events = vec![Input::Move {
        x: m.x_position,
        y: m.y_position,
    }];
    let down = f.contains(PointerFlags::DOWN);
    for (flag, button) in [
        (PointerFlags::LEFT_BUTTON, Button::Left),
        (PointerFlags::RIGHT_BUTTON, Button::Right),
        (PointerFlags::MIDDLE_BUTTON_OR_WHEEL, Button::Middle),
    ] {
        if f.contains(flag) {
            events.push(Input::Button { button, down });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Blind;

    const IO: u16 = 1003;

    /// A Frame Acknowledge PDU for `frame_id`: the share control PDU, and in its MCS Send
    /// Data Request on channel `channel`.
    fn frame_ack(frame_id: u32, channel: u16) -> (Vec<u8>, Vec<u8>) {
        use ironrdp_pdu::codecs::rfx::FrameAcknowledgePdu;
        use ironrdp_pdu::rdp::headers::{CompressionFlags, ShareDataHeader, StreamPriority};
        let share = ironrdp_core::encode_vec(&ShareControlHeader {
            share_control_pdu: ShareControlPdu::Data(ShareDataHeader {
                share_data_pdu: ShareDataPdu::FrameAcknowledge(FrameAcknowledgePdu { frame_id }),
                stream_priority: StreamPriority::Medium,
                compression_flags: CompressionFlags::empty(),
                compression_type: ironrdp_pdu::rdp::client_info::CompressionType::K8,
            }),
            pdu_source: 1007,
            share_id: 0x1_03ea,
        })
        .unwrap();
        let mcs = ironrdp_core::encode_vec(&X224(McsMessage::SendDataRequest(SendDataRequest {
            initiator_id: 1007,
            channel_id: channel,
            user_data: std::borrow::Cow::Borrowed(&share),
        })))
        .unwrap();
        (share, mcs)
    }

    #[test]
    fn frame_acknowledgements_reach_the_session() {
        let (share, mcs) = frame_ack(0x0102_0304, IO);
        assert_eq!(
            share_data(&Blind, &share).unwrap(),
            Outcome::FrameAcknowledged(0x0102_0304)
        );
        // During the connection sequence (a reactivation) they are recognised too, on the
        // I/O channel only.
        assert_eq!(frame_acknowledgement(IO, &mcs), Some(0x0102_0304));
        assert_eq!(frame_acknowledgement(IO, &frame_ack(9, 1004).1), None);
    }

    #[test]
    fn malformed_frame_acknowledgements_are_ignored() {
        let (share, mcs) = frame_ack(7, IO);
        // The frame id cut short, the lengths in the headers agreeing (totalLength at 0,
        // uncompressedLength at 12).
        let mut short = share[..share.len() - 2].to_vec();
        for at in [0, 12] {
            let v = u16::from_le_bytes([short[at], short[at + 1]]) - 2;
            short[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(share_data(&Blind, &short).unwrap(), Outcome::Continue);
        // Every truncation, and every single corrupted byte: ignored or read whole, never a
        // panic.
        for len in 0..share.len() {
            assert_eq!(
                share_data(&Blind, &share[..len]).unwrap(),
                Outcome::Continue
            );
            assert_eq!(frame_acknowledgement(IO, &mcs[..len.min(mcs.len())]), None);
        }
        for at in 0..share.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut bad = share.clone();
                bad[at] = v;
                let outcome = share_data(&Blind, &bad).unwrap();
                assert!(
                    matches!(outcome, Outcome::Continue | Outcome::FrameAcknowledged(_)),
                    "{outcome:?}"
                );
            }
        }
    }

    #[test]
    fn mouse_pdus_become_moves_buttons_and_wheel_turns() {
        let m = |flags, wheel, x, y| MousePdu {
            flags,
            number_of_wheel_rotation_units: wheel,
            x_position: x,
            y_position: y,
        };
        assert_eq!(
            mouse(&m(PointerFlags::MOVE, 0, 10, 20)),
            vec![Input::Move { x: 10, y: 20 }]
        );
        assert_eq!(
            mouse(&m(PointerFlags::LEFT_BUTTON | PointerFlags::DOWN, 0, 5, 6)),
            vec![
                Input::Move { x: 5, y: 6 },
                Input::Button {
                    button: Button::Left,
                    down: true
                }
            ]
        );
        assert_eq!(
            mouse(&m(PointerFlags::VERTICAL_WHEEL, -120, 0, 0)),
            vec![Input::Wheel {
                vertical: -120,
                horizontal: 0
            }]
        );
    }
}
