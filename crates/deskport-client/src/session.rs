//! The active session: reads the server's PDUs into a [`DecodedImage`], hands new pixels to a
//! [`Frontend`], and sends the frontend's input (fast-path, or slow-path input PDUs when the
//! server does not accept fast-path input).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironrdp_async::FramedWrite as _;
use ironrdp_core::WriteBuf;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags as FastKeyboardFlags};
use ironrdp_pdu::input::{InputEvent, InputEventPdu};
use ironrdp_pdu::rdp::capability_sets::InputFlags;
use ironrdp_pdu::rdp::headers::ShareDataPdu;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::connect::{ClientError, Connected};
use deskport_desktop::clipboard::Clipboard as LocalClipboard;
use deskport_proto::clipboard::{ClipboardAction, ClipboardSync, FromPeer};
use deskport_proto::next;
use ironrdp_cliprdr::CliprdrClient;

/// What the user (or the window) asks of the session.
#[derive(Debug, Clone)]
pub enum UiEvent {
    /// Keyboard and mouse events, in order.
    Input(Vec<FastPathInputEvent>),
    /// Paint this part of the window again from the current image.
    Repaint(InclusiveRectangle),
    /// The window has this size now (the server is asked for it, if it can change size).
    Resized(u16, u16),
    /// The user closed the window.
    Close,
    /// Ask the frontend again when it wants [`Frontend::wake`] called (it became ready for
    /// more, e.g. a browser acknowledged a frame).
    Wake,
}

/// Where decoded pixels go.
pub trait Frontend {
    /// The pixel layout the frontend wants in the image it is handed.
    const PIXEL_FORMAT: PixelFormat;

    /// New pixels in `region` of `image`. Returns `true` when the frontend is done (the
    /// session then ends).
    fn update(&mut self, image: &DecodedImage, region: &InclusiveRectangle)
        -> anyhow::Result<bool>;

    /// The desktop was resized by the server (after a reactivation, or a graphics reset);
    /// `image` is blank or about to be painted whole.
    fn resized(&mut self, image: &DecodedImage) -> anyhow::Result<()>;

    /// The server follows size changes from now on (display control is ready).
    fn resizable(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The server's pointer shape changed.
    fn pointer_shape(&mut self, shape: PointerShape) -> anyhow::Result<()> {
        let _ = shape;
        Ok(())
    }

    /// A program on the server moved the pointer to `(x, y)` on the desktop.
    fn pointer_position(&mut self, x: u16, y: u16) -> anyhow::Result<()> {
        let _ = (x, y);
        Ok(())
    }

    /// When the frontend wants [`Frontend::wake`] called (without new pixels), if ever.
    fn wake_at(&self) -> Option<Instant> {
        None
    }

    /// Called at [`Frontend::wake_at`]; `true` when the frontend is done.
    fn wake(&mut self, image: &DecodedImage) -> anyhow::Result<bool> {
        let _ = image;
        Ok(false)
    }

    /// Whether the frontend still waits for pixels it has never received (the session then asks
    /// the server to redraw everything when the server allows it).
    fn incomplete(&self) -> bool {
        false
    }
}

/// What the pointer looks like over the desktop.
#[derive(Debug, Clone)]
pub enum PointerShape {
    /// The server's image: RGBA, straight alpha (ironrdp's "accelerated" target).
    Bitmap(std::sync::Arc<ironrdp_graphics::pointer::DecodedPointer>),
    /// No pointer.
    Hidden,
    /// The client's own default pointer.
    Default,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The frontend had what it wanted (the screenshot is written).
    Done,
    /// The user closed the window.
    Closed,
    /// The server ended the session, with its reason.
    Server(String),
}

/// Writes the desktop to a PNG file once every pixel has been painted at least once since the
/// connection and the screen then stayed still for [`SETTLE`] (servers such as xrdp paint a
/// blank desktop first), or at the latest [`SETTLE_MAX`] after it was complete (a screen that
/// never stops changing).
#[derive(Debug)]
pub struct Screenshot {
    path: PathBuf,
    width: usize,
    height: usize,
    covered: Vec<bool>,
    missing: usize,
    completed_at: Option<Instant>,
    last_change: Option<Instant>,
}

/// How long the complete screen must stay unchanged before it is written.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How long after the screen was first complete it is written anyway.
pub const SETTLE_MAX: Duration = Duration::from_secs(2);

impl Screenshot {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            width: 0,
            height: 0,
            covered: Vec::new(),
            missing: usize::MAX,
            completed_at: None,
            last_change: None,
        }
    }

    /// When the last missing pixel arrived (before the PNG was written).
    pub fn completed_at(&self) -> Option<Instant> {
        self.completed_at
    }

    fn reset(&mut self, width: u16, height: u16) {
        self.width = usize::from(width);
        self.height = usize::from(height);
        self.covered = vec![false; self.width * self.height];
        self.missing = self.width * self.height;
    }

    fn write(&self, image: &DecodedImage) -> anyhow::Result<()> {
        let mut rgba = image.data().to_vec();
        for px in rgba.chunks_exact_mut(4) {
            px[3] = 0xff;
        }
        let buffer =
            image::RgbaImage::from_raw(u32::from(image.width()), u32::from(image.height()), rgba)
                .ok_or_else(|| anyhow::anyhow!("the decoded image has an unexpected size"))?;
        buffer
            .save_with_format(&self.path, image::ImageFormat::Png)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }
}

impl Frontend for Screenshot {
    const PIXEL_FORMAT: PixelFormat = PixelFormat::RgbA32;

    fn update(
        &mut self,
        image: &DecodedImage,
        region: &InclusiveRectangle,
    ) -> anyhow::Result<bool> {
        if self.covered.is_empty() {
            self.reset(image.width(), image.height());
        }
        let right = usize::from(region.right).min(self.width.saturating_sub(1));
        let bottom = usize::from(region.bottom).min(self.height.saturating_sub(1));
        for y in usize::from(region.top)..=bottom {
            let row = &mut self.covered[y * self.width..(y + 1) * self.width];
            for c in &mut row[usize::from(region.left).min(right)..=right] {
                if !*c {
                    *c = true;
                    self.missing -= 1;
                }
            }
        }
        let now = Instant::now();
        self.last_change = Some(now);
        if self.missing == 0 && self.completed_at.is_none() {
            self.completed_at = Some(now);
        }
        Ok(false)
    }

    fn wake_at(&self) -> Option<Instant> {
        let complete = self.completed_at.filter(|_| self.missing == 0)?;
        let still = self.last_change.unwrap_or(complete) + SETTLE;
        Some(still.min(complete + SETTLE_MAX))
    }

    fn wake(&mut self, image: &DecodedImage) -> anyhow::Result<bool> {
        if self.wake_at().is_some_and(|at| Instant::now() >= at) {
            self.write(image)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn resized(&mut self, image: &DecodedImage) -> anyhow::Result<()> {
        self.reset(image.width(), image.height());
        Ok(())
    }

    fn incomplete(&self) -> bool {
        self.missing != 0
    }
}

/// Turns fast-path input events into one slow-path Input PDU, for servers that do not accept
/// fast-path input (MS-RDPBCGR 2.2.8.1.2).
fn slow_path(events: &[FastPathInputEvent]) -> InputEventPdu {
    use ironrdp_pdu::input::scan_code::{KeyboardFlags, ScanCodePdu};
    use ironrdp_pdu::input::unicode::UnicodePdu;
    let keyboard_flags = |flags: FastKeyboardFlags| {
        let mut out = KeyboardFlags::empty();
        if flags.contains(FastKeyboardFlags::RELEASE) {
            out |= KeyboardFlags::RELEASE;
        }
        if flags.contains(FastKeyboardFlags::EXTENDED) {
            out |= KeyboardFlags::EXTENDED;
        }
        if flags.contains(FastKeyboardFlags::EXTENDED1) {
            out |= KeyboardFlags::EXTENDED_1;
        }
        out
    };
    InputEventPdu(
        events
            .iter()
            .filter_map(|event| match event {
                FastPathInputEvent::KeyboardEvent(flags, code) => {
                    Some(InputEvent::ScanCode(ScanCodePdu {
                        flags: keyboard_flags(*flags),
                        key_code: u16::from(*code),
                    }))
                }
                FastPathInputEvent::UnicodeKeyboardEvent(flags, code) => {
                    Some(InputEvent::Unicode(UnicodePdu {
                        flags: if flags.contains(FastKeyboardFlags::RELEASE) {
                            ironrdp_pdu::input::unicode::KeyboardFlags::RELEASE
                        } else {
                            ironrdp_pdu::input::unicode::KeyboardFlags::empty()
                        },
                        unicode_code: *code,
                    }))
                }
                FastPathInputEvent::MouseEvent(pdu) => Some(InputEvent::Mouse(*pdu)),
                FastPathInputEvent::MouseEventEx(pdu) => Some(InputEvent::MouseX(*pdu)),
                FastPathInputEvent::MouseEventRel(pdu) => Some(InputEvent::MouseRel(*pdu)),
                FastPathInputEvent::QoeEvent(_) | FastPathInputEvent::SyncEvent(_) => None,
            })
            .collect(),
    )
}

fn session_error(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("{what}: {e}"))
}

/// The clipboard of a session: what the server reports on the channel, and the local side's
/// clipboard (the display's for a window, the browser's for the console relay).
#[derive(Debug)]
pub struct Clipboard {
    pub from_server: mpsc::UnboundedReceiver<FromPeer>,
    /// Texts copied on the local side, to be offered to the server.
    pub copied: mpsc::UnboundedReceiver<String>,
    /// Where the server's copies go.
    pub local: LocalSide,
}

/// Where the server's clipboard text is put.
#[derive(Debug)]
pub enum LocalSide {
    /// The local X display's clipboard.
    X(deskport_desktop::clipboard::ClipboardOwner),
    /// A channel (the browser console relay forwards it to the page).
    Channel(mpsc::UnboundedSender<String>),
}

impl Clipboard {
    /// The clipboard of a window on the local X display.
    pub fn of_x(from_server: mpsc::UnboundedReceiver<FromPeer>, x: LocalClipboard) -> Self {
        let LocalClipboard { owner, copied } = x;
        Self {
            from_server,
            copied,
            local: LocalSide::X(owner),
        }
    }
}

/// Carries out a clipboard action: on the channel (the bytes to send, if any) or on the
/// local display.
fn clipboard_action(
    stage: &mut ActiveStage,
    owner: Option<&LocalSide>,
    action: Option<ClipboardAction>,
) -> Vec<ActiveStageOutput> {
    let Some(action) = action else {
        return Vec::new();
    };
    if let ClipboardAction::SetLocal(text) = action {
        match owner {
            Some(LocalSide::X(owner)) => {
                if let Err(e) = owner.own(text) {
                    tracing::debug!(error = %e, "Clipboard");
                }
            }
            Some(LocalSide::Channel(tx)) => {
                let _ = tx.send(text);
            }
            None => {}
        }
        return Vec::new();
    }
    let Some(cliprdr) = stage.get_svc_processor_mut::<CliprdrClient>() else {
        return Vec::new();
    };
    let messages = match deskport_proto::clipboard::perform(cliprdr, &action) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "Clipboard channel");
            return Vec::new();
        }
    };
    match stage.process_svc_processor_messages(messages) {
        Ok(frame) => vec![ActiveStageOutput::ResponseFrame(frame)],
        Err(e) => {
            tracing::debug!(error = %e, "Clipboard channel");
            Vec::new()
        }
    }
}

/// Runs the session until the frontend is done, the user closes it, the server ends it, or
/// `deadline` passes while the frontend is still incomplete.
pub async fn run<F: Frontend>(
    connected: Connected,
    frontend: &mut F,
    mut events: Option<mpsc::UnboundedReceiver<UiEvent>>,
    deadline: Option<(Instant, String)>,
    clipboard: Option<Clipboard>,
) -> Result<Ending, ClientError> {
    let (mut from_server, owner, mut copied) = match clipboard {
        Some(Clipboard {
            from_server,
            copied,
            local,
        }) => (Some(from_server), Some(local), Some(copied)),
        None => (None, None, None),
    };
    let mut sync = ClipboardSync::new();
    let Connected {
        mut framed, result, ..
    } = connected;
    let fast_path_input = result
        .input_flags
        .intersects(InputFlags::FASTPATH_INPUT | InputFlags::FASTPATH_INPUT_2);
    let refresh_rect_support = result.refresh_rect_support;
    let suppress_output_support = result.suppress_output_support;
    let activation_factory = result.activation_factory;
    let mut size = result.desktop_size;
    let mut image = DecodedImage::new(F::PIXEL_FORMAT, size.width, size.height);
    let mut stage: ActiveStage = ActiveStageBuilder {
        static_channels: result.static_channels,
        user_channel_id: result.user_channel_id,
        io_channel_id: result.io_channel_id,
        message_channel_id: result.message_channel_id,
        share_id: result.share_id,
        compression_type: result.compression_type,
        enable_server_pointer: result.enable_server_pointer,
        pointer_software_rendering: result.pointer_software_rendering,
    }
    .build();
    frontend
        .resized(&image)
        .map_err(|e| session_error("frontend", e))?;

    // A server that painted only part of the desktop is asked once a second for the rest.
    let mut redraw = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let deadline_at = deadline
        .as_ref()
        .map(|(at, _)| tokio::time::Instant::from_std(*at));

    // A size the window asked for, sent when it has stayed the same for a moment (a window
    // being dragged changes size many times).
    let mut wanted: Option<((u16, u16), tokio::time::Instant)> = None;
    let mut resizable = false;
    loop {
        let wake_at = frontend.wake_at().map(tokio::time::Instant::from_std);
        if !resizable && stage.display_control_capabilities().is_some() {
            resizable = true;
            tracing::debug!("The server follows the window's size (display control)");
            frontend
                .resizable()
                .map_err(|e| session_error("frontend", e))?;
        }
        let outputs = tokio::select! {
            _ = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if frontend.wake(&image).map_err(|e| ClientError::Protocol(e.to_string()))? {
                    return Ok(Ending::Done);
                }
                Vec::new()
            }
            _ = async {
                match wanted {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(((width, height), _)) = wanted.take() else {
                    continue;
                };
                let (width, height) = ironrdp_displaycontrol::pdu::MonitorLayoutEntry::adjust_display_size(
                    u32::from(width),
                    u32::from(height),
                );
                if (width, height) == (u32::from(size.width), u32::from(size.height)) {
                    continue;
                }
                match stage.encode_resize(width, height, None, None) {
                    Some(frame) => {
                        tracing::info!(width, height, "Asking the server for the window's size");
                        vec![ActiveStageOutput::ResponseFrame(
                            frame.map_err(|e| session_error("resize request", e))?,
                        )]
                    }
                    None => {
                        tracing::info!(width, height, "The server cannot change the desktop's size (no Display Control)");
                        Vec::new()
                    }
                }
            }
            event = next(&mut from_server) => match event.inspect(|e| tracing::debug!(?e, "Clipboard event from the server")) {
                None => {
                    from_server = None;
                    Vec::new()
                }
                Some(event) => {
                    let action = sync.from_peer(event);
                    clipboard_action(&mut stage, owner.as_ref(), action)
                }
            },
            text = next(&mut copied) => match text {
                None => {
                    copied = None;
                    Vec::new()
                }
                Some(text) => {
                    let ready = stage
                        .get_svc_processor_mut::<CliprdrClient>()
                        .is_some_and(|c| c.is_ready());
                    let action = sync.copied(text, ready);
                    clipboard_action(&mut stage, owner.as_ref(), action)
                }
            },
            frame = framed.read_pdu() => {
                let (action, payload) = match frame {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(Ending::Server("the server closed the connection".to_owned()))
                    }
                    Err(e) => return Err(session_error("reading from the server", e)),
                };
                let outputs = stage
                    .process(&mut image, action, &payload, framed.last_read_at())
                    .map_err(|e| session_error("the server sent", e))?;
                // The graphics pipeline resets the image to a new size (Reset Graphics)
                // without a reactivation.
                if (image.width(), image.height()) != (size.width, size.height) {
                    size = ironrdp_connector::DesktopSize {
                        width: image.width(),
                        height: image.height(),
                    };
                    tracing::debug!(size.width, size.height, "The graphics were reset to a new size");
                    frontend
                        .resized(&image)
                        .map_err(|e| session_error("frontend", e))?;
                }
                outputs
            }
            event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match event {
                None | Some(UiEvent::Close) => {
                    let frames = stage.graceful_shutdown().map_err(|e| session_error("shutdown", e))?;
                    for out in frames {
                        if let ActiveStageOutput::ResponseFrame(frame) = out {
                            let _ = framed.write_all(&frame).await;
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), framed.get_inner_mut().0.shutdown()).await;
                    return Ok(Ending::Closed);
                }
                Some(UiEvent::Wake) => Vec::new(),
                Some(UiEvent::Repaint(region)) => {
                    vec![ActiveStageOutput::GraphicsUpdate(region)]
                }
                Some(UiEvent::Resized(width, height)) => {
                    wanted = Some((
                        (width, height),
                        tokio::time::Instant::now() + Duration::from_millis(200),
                    ));
                    Vec::new()
                }
                Some(UiEvent::Input(input)) if fast_path_input => {
                    stage
                        .process_fastpath_input(&mut image, &input)
                        .map_err(|e| session_error("input", e))?
                }
                Some(UiEvent::Input(input)) => {
                    let mut buf = WriteBuf::new();
                    stage
                        .encode_static(&mut buf, ShareDataPdu::Input(slow_path(&input)))
                        .map_err(|e| session_error("input", e))?;
                    vec![ActiveStageOutput::ResponseFrame(buf.into_inner())]
                }
            },
            _ = redraw.tick() => {
                if frontend.incomplete() {
                    tracing::debug!("Asking the server to redraw the desktop");
                    stage
                        .request_full_redraw(size.width, size.height, refresh_rect_support, suppress_output_support)
                        .map_err(|e| session_error("redraw request", e))?
                        .into_iter()
                        .map(ActiveStageOutput::ResponseFrame)
                        .collect()
                } else {
                    Vec::new()
                }
            }
            _ = async {
                // (A complete screen waiting to settle is not late.)
                match deadline_at.filter(|_| wake_at.is_none()) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let what = deadline.map(|(_, what)| what).unwrap_or_default();
                return Err(ClientError::Timeout(what));
            }
        };

        for out in outputs {
            match out {
                ActiveStageOutput::ResponseFrame(frame) => {
                    if !frame.is_empty() {
                        framed
                            .write_all(&frame)
                            .await
                            .map_err(|e| session_error("writing to the server", e))?;
                    }
                }
                ActiveStageOutput::GraphicsUpdate(region) => {
                    if frontend
                        .update(&image, &region)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?
                    {
                        return Ok(Ending::Done);
                    }
                }
                ActiveStageOutput::Terminate(reason) => {
                    return Ok(Ending::Server(reason.description()))
                }
                ActiveStageOutput::DeactivateAll => {
                    tracing::debug!("Deactivation-Reactivation Sequence");
                    let mut activation = activation_factory.create();
                    let mut buf = WriteBuf::new();
                    loop {
                        ironrdp_async::single_sequence_step(&mut framed, &mut activation, &mut buf)
                            .await
                            .map_err(|e| session_error("reactivation", e))?;
                        if let ironrdp_connector::connection_activation::ConnectionActivationState::Finalized {
                            desktop_size,
                            share_id,
                            enable_server_pointer,
                            pointer_software_rendering,
                            ..
                        } = activation.connection_activation_state()
                        {
                            size = desktop_size;
                            image = DecodedImage::new(F::PIXEL_FORMAT, size.width, size.height);
                            stage.reactivate(
                                activation.io_channel_id(),
                                activation.user_channel_id(),
                                share_id,
                                enable_server_pointer,
                                pointer_software_rendering,
                                stage.static_channel_chunk_size(),
                            );
                            frontend
                                .resized(&image)
                                .map_err(|e| session_error("frontend", e))?;
                            break;
                        }
                    }
                }
                ActiveStageOutput::PointerBitmap(pointer) => frontend
                    .pointer_shape(PointerShape::Bitmap(pointer))
                    .map_err(|e| session_error("frontend", e))?,
                ActiveStageOutput::PointerHidden => frontend
                    .pointer_shape(PointerShape::Hidden)
                    .map_err(|e| session_error("frontend", e))?,
                ActiveStageOutput::PointerDefault => frontend
                    .pointer_shape(PointerShape::Default)
                    .map_err(|e| session_error("frontend", e))?,
                ActiveStageOutput::PointerPosition { x, y } => frontend
                    .pointer_position(x, y)
                    .map_err(|e| session_error("frontend", e))?,
                other => tracing::trace!(?other, "Ignored session output"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_pdu::input::mouse::PointerFlags;
    use ironrdp_pdu::input::MousePdu;

    #[test]
    fn slow_path_keeps_keys_and_mouse() {
        let pdu = slow_path(&[
            FastPathInputEvent::KeyboardEvent(
                FastKeyboardFlags::RELEASE | FastKeyboardFlags::EXTENDED,
                0x48,
            ),
            FastPathInputEvent::MouseEvent(MousePdu {
                flags: PointerFlags::MOVE,
                number_of_wheel_rotation_units: 0,
                x_position: 3,
                y_position: 4,
            }),
            FastPathInputEvent::QoeEvent(1),
        ]);
        assert_eq!(pdu.0.len(), 2);
        match &pdu.0[0] {
            InputEvent::ScanCode(s) => {
                assert_eq!(s.key_code, 0x48);
                assert!(s
                    .flags
                    .contains(ironrdp_pdu::input::scan_code::KeyboardFlags::RELEASE));
                assert!(s
                    .flags
                    .contains(ironrdp_pdu::input::scan_code::KeyboardFlags::EXTENDED));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&pdu.0[1], InputEvent::Mouse(m) if m.x_position == 3 && m.y_position == 4)
        );
    }

    #[test]
    fn screenshot_waits_for_every_pixel() {
        let dir = deskport_testsupport::data_dir();
        let path = dir.path().join("shot.png");
        let mut shot = Screenshot::new(path.clone());
        let image = DecodedImage::new(PixelFormat::RgbA32, 100, 50);
        shot.resized(&image).unwrap();
        let left = InclusiveRectangle {
            left: 0,
            top: 0,
            right: 49,
            bottom: 49,
        };
        assert!(!shot.update(&image, &left).unwrap());
        assert!(
            !shot.update(&image, &left).unwrap(),
            "the same region twice is not the whole desktop"
        );
        assert!(shot.incomplete());
        let right = InclusiveRectangle {
            left: 50,
            top: 0,
            right: 200, // clipped to the desktop
            bottom: 49,
        };
        // Complete: written once the screen stayed still for SETTLE, not before.
        assert!(!shot.update(&image, &right).unwrap());
        assert!(!shot.incomplete());
        let at = shot.wake_at().expect("a complete screen waits to settle");
        assert!(at > Instant::now() && at <= Instant::now() + SETTLE);
        assert!(!shot.wake(&image).unwrap(), "too early");
        assert!(!path.exists());
        std::thread::sleep(SETTLE);
        // A change restarts the wait, but never past SETTLE_MAX after completion.
        assert!(!shot.update(&image, &left).unwrap());
        let later = shot.wake_at().unwrap();
        assert!(later > at && later <= shot.completed_at().unwrap() + SETTLE_MAX);
        std::thread::sleep(later.saturating_duration_since(Instant::now()));
        assert!(shot.wake(&image).unwrap());
        let png = image::open(&path).unwrap();
        assert_eq!((png.width(), png.height()), (100, 50));
    }
}
