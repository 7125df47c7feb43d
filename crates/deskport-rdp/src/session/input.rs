//! What the client sends during the session: fast-path and slow-path input (keyboard,
//! Unicode, mouse, wheel) translated into desktop [`Input`]; data on the virtual channels
//! handed to their modules; the client's shutdown.

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

/// Applies the PDUs the client sent while the server was busy with the connection sequence
/// (slow-path); `Some` when one ends the session.
pub fn backlog(
    desktop: &dyn Desktop,
    io_channel_id: u16,
    pdus: &[Vec<u8>],
    channels: &mut Channels,
    out: &mut Vec<u8>,
) -> anyhow::Result<Option<End>> {
    for pdu in pdus {
        if let Some(end) = handle(desktop, io_channel_id, Action::X224, pdu, channels, out)? {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

/// Applies one client PDU; `Some` when it ends the session.
pub fn handle(
    desktop: &dyn Desktop,
    io_channel_id: u16,
    action: Action,
    pdu: &[u8],
    channels: &mut Channels,
    out: &mut Vec<u8>,
) -> anyhow::Result<Option<End>> {
    match action {
        Action::FastPath => {
            let input: FastPathInput = match ironrdp_core::decode(pdu) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable fast-path input ignored");
                    return Ok(None);
                }
            };
            for event in input.input_events() {
                for i in fast_path_event(event) {
                    desktop.input(i)?;
                }
            }
            Ok(None)
        }
        Action::X224 => {
            let message: X224<McsMessage<'_>> = match ironrdp_core::decode(pdu) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "Undecodable PDU ignored");
                    return Ok(None);
                }
            };
            match message.0 {
                McsMessage::DisconnectProviderUltimatum(_) => Ok(Some(End::Client)),
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) if channel_id == io_channel_id => {
                    let Ok(header) = ironrdp_core::decode::<ShareControlHeader>(user_data.as_ref())
                    else {
                        return Ok(None);
                    };
                    let ShareControlPdu::Data(data) = header.share_control_pdu else {
                        return Ok(None);
                    };
                    match data.share_data_pdu {
                        ShareDataPdu::Input(input) => {
                            for event in &input.0 {
                                for i in slow_path_event(event) {
                                    desktop.input(i)?;
                                }
                            }
                            Ok(None)
                        }
                        ShareDataPdu::ShutdownRequest => Ok(Some(End::Client)),
                        _ => Ok(None),
                    }
                }
                McsMessage::SendDataRequest(SendDataRequest {
                    channel_id,
                    user_data,
                    ..
                }) => {
                    channels.process(channel_id, user_data.as_ref(), out);
                    Ok(None)
                }
                _ => Ok(None),
            }
        }
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
