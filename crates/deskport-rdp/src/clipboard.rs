//! Text clipboard between the client and the session's X display: the `cliprdr` static
//! virtual channel (ironrdp-cliprdr, server role) on one side, the X `CLIPBOARD` selection on
//! the other.
//!
//! Both directions fetch eagerly, text only (CF_UNICODETEXT ↔ UTF8_STRING):
//! - the client copies → its format list offers text → the server asks for it at once and,
//!   when it arrives, owns `CLIPBOARD` on the session's display with that text;
//! - an X application copies → XFIXES reports the new owner → the worker converts the
//!   selection to UTF-8 → the server announces text to the client and answers its request.
//!
//! The cliprdr backend and the X worker only pass events; the session loop owns the channel
//! (see `session.rs`).

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ironrdp_cliprdr::backend::CliprdrBackend;
use ironrdp_cliprdr::pdu::{
    ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, FileContentsRequest,
    FileContentsResponse, FormatDataRequest, FormatDataResponse, LockDataId,
};
use tokio::sync::mpsc::UnboundedSender;
use x11rb::connection::Connection as _;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// Texts longer than this are not fetched from X (no INCR transfers).
const MAX_TEXT: u32 = 4 << 20;

/// The next item of an optional receiver (a channel a session may not have); never resolves
/// without one, so it can sit in a `select!` either way.
pub async fn next<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// What the other side of the channel reports (the client, for the server's channel; the
/// server, for the client's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromPeer {
    /// The peer copied something; `text` if it offers text.
    Copied { text: bool },
    /// The peer pastes: it wants our text.
    WantsText,
    /// The text we asked for (`None`: the peer had none to give).
    Text(Option<String>),
    /// The channel is up: both sides exchanged capabilities and a first format list.
    Ready,
    /// (Client role) the server is ready for our first format list.
    FormatListRequested,
}

/// The cliprdr backend (either role): forwards what matters to the session loop.
#[derive(Debug)]
pub struct Backend {
    tx: UnboundedSender<FromPeer>,
}

ironrdp_core::impl_as_any!(Backend);

impl Backend {
    pub fn new(tx: UnboundedSender<FromPeer>) -> Self {
        Self { tx }
    }
}

impl CliprdrBackend for Backend {
    fn temporary_directory(&self) -> &str {
        ".cliprdr"
    }

    fn client_capabilities(&self) -> ClipboardGeneralCapabilityFlags {
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES
    }

    fn on_ready(&mut self) {
        let _ = self.tx.send(FromPeer::Ready);
    }

    fn on_request_format_list(&mut self) {
        let _ = self.tx.send(FromPeer::FormatListRequested);
    }

    fn on_process_negotiated_capabilities(&mut self, _: ClipboardGeneralCapabilityFlags) {}

    fn on_remote_copy(&mut self, available_formats: &[ClipboardFormat]) {
        let text = available_formats.iter().any(|f| {
            f.id() == ClipboardFormatId::CF_UNICODETEXT || f.id() == ClipboardFormatId::CF_TEXT
        });
        let _ = self.tx.send(FromPeer::Copied { text });
    }

    fn on_format_data_request(&mut self, _request: FormatDataRequest) {
        // Only Unicode text is ever announced, so that is what the client asks for.
        let _ = self.tx.send(FromPeer::WantsText);
    }

    fn on_format_data_response(&mut self, response: FormatDataResponse<'_>) {
        let text = (!response.is_error())
            .then(|| response.to_unicode_string().ok())
            .flatten();
        let _ = self.tx.send(FromPeer::Text(text));
    }

    fn on_file_contents_request(&mut self, _: FileContentsRequest) {}

    fn on_file_contents_response(&mut self, _: FileContentsResponse<'_>) {}

    fn on_lock(&mut self, _: LockDataId) {}

    fn on_unlock(&mut self, _: LockDataId) {}
}

/// The text format the server offers.
pub fn text_format() -> ClipboardFormat {
    ClipboardFormat::new(ClipboardFormatId::CF_UNICODETEXT)
}

/// A response carrying `text`, or an error response without one.
pub fn text_response(text: Option<&str>) -> ironrdp_cliprdr::pdu::OwnedFormatDataResponse {
    use ironrdp_core::IntoOwned as _;
    match text {
        Some(t) => FormatDataResponse::new_unicode_string(t).into_owned(),
        None => FormatDataResponse::new_error(),
    }
}

/// Orders to the X side.
#[derive(Debug)]
pub enum ToX {
    /// Own `CLIPBOARD` with this text.
    Own(String),
}

/// Gives the X side its orders (from any thread: the X connection is shared). When the last
/// clone drops, the worker thread ends.
#[derive(Debug, Clone)]
pub struct ToXSender {
    worker: Arc<Worker>,
    _stop: Arc<StopOnDrop>,
}

impl ToXSender {
    pub fn send(&self, order: ToX) -> anyhow::Result<()> {
        match order {
            ToX::Own(text) => {
                tracing::debug!(
                    bytes = text.len(),
                    "Owning the X clipboard with the peer's text"
                );
                *self.worker.owned.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
                self.worker.conn.set_selection_owner(
                    self.worker.window,
                    self.worker.clipboard,
                    x11rb::CURRENT_TIME,
                )?;
                self.worker.conn.flush()?;
            }
        }
        Ok(())
    }
}

/// Wakes the worker with a message that tells it to end.
#[derive(Debug)]
struct StopOnDrop(Arc<Worker>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let w = &self.0;
        let stop = xproto::ClientMessageEvent::new(32, w.window, w.stop, [0u32; 5]);
        let _ = w
            .conn
            .send_event(false, w.window, xproto::EventMask::NO_EVENT, stop);
        let _ = w.conn.flush();
    }
}

/// The X side of one session's clipboard: a thread blocked on its own X connection (an
/// unmapped window, XFIXES selection events) — no polling.
#[derive(Debug)]
pub struct XClipboard {
    pub to_x: ToXSender,
    /// Texts X applications copied.
    pub copied: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl XClipboard {
    /// Starts the worker on `display`.
    pub fn start(display: &str) -> anyhow::Result<Self> {
        let (tx, copied) = tokio::sync::mpsc::unbounded_channel();
        let worker = Arc::new(Worker::connect(display)?);
        let thread_worker = worker.clone();
        std::thread::Builder::new()
            .name("deskport-clipboard".into())
            .spawn(move || {
                if let Err(e) = thread_worker.run(&tx) {
                    tracing::debug!(error = %e, "The clipboard worker stopped");
                }
            })
            .context("start the clipboard thread")?;
        Ok(Self {
            to_x: ToXSender {
                _stop: Arc::new(StopOnDrop(worker.clone())),
                worker,
            },
            copied,
        })
    }
}

#[derive(Debug)]
struct Worker {
    conn: RustConnection,
    window: xproto::Window,
    clipboard: xproto::Atom,
    utf8: xproto::Atom,
    targets: xproto::Atom,
    text_atom: xproto::Atom,
    property: xproto::Atom,
    stop: xproto::Atom,
    /// The text this worker provides while it owns `CLIPBOARD`.
    owned: Mutex<Option<String>>,
}

impl Worker {
    fn connect(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connect to X display {display} for the clipboard"))?;
        let root = conn.setup().roots[screen_num].root;
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            xproto::WindowClass::INPUT_ONLY,
            0,
            &xproto::CreateWindowAux::new(),
        )?;
        let atom = |name: &str| -> anyhow::Result<xproto::Atom> {
            Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
        };
        let clipboard = atom("CLIPBOARD")?;
        let utf8 = atom("UTF8_STRING")?;
        let targets = atom("TARGETS")?;
        let text_atom = atom("TEXT")?;
        let property = atom("DESKPORT_CLIPBOARD")?;
        let stop = atom("DESKPORT_CLIPBOARD_STOP")?;
        conn.xfixes_query_version(5, 0)?
            .reply()
            .context("query XFIXES")?;
        conn.xfixes_select_selection_input(
            window,
            clipboard,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER,
        )?;
        // What is on the clipboard already is offered too.
        if conn.get_selection_owner(clipboard)?.reply()?.owner != x11rb::NONE {
            conn.convert_selection(window, clipboard, utf8, property, x11rb::CURRENT_TIME)?;
        }
        conn.flush()?;
        Ok(Self {
            conn,
            window,
            clipboard,
            utf8,
            targets,
            text_atom,
            property,
            stop,
            owned: Mutex::new(None),
        })
    }

    fn run(&self, copied: &UnboundedSender<String>) -> anyhow::Result<()> {
        loop {
            match self.conn.wait_for_event()? {
                Event::ClientMessage(e) if e.window == self.window && e.type_ == self.stop => {
                    let _ = self.conn.destroy_window(self.window);
                    let _ = self.conn.flush();
                    return Ok(());
                }
                event => self.handle(event, copied)?,
            }
        }
    }

    fn handle(&self, event: Event, copied: &UnboundedSender<String>) -> anyhow::Result<()> {
        match event {
            Event::XfixesSelectionNotify(e)
                if e.selection == self.clipboard
                    && e.owner != self.window
                    && e.owner != x11rb::NONE =>
            {
                // Another application copied: ask for its text as UTF-8.
                *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.conn.convert_selection(
                    self.window,
                    self.clipboard,
                    self.utf8,
                    self.property,
                    e.selection_timestamp,
                )?;
                self.conn.flush()?;
            }
            Event::SelectionNotify(e)
                if e.requestor == self.window && e.property != x11rb::NONE =>
            {
                let reply = self
                    .conn
                    .get_property(
                        true,
                        self.window,
                        self.property,
                        xproto::AtomEnum::ANY,
                        0,
                        MAX_TEXT / 4,
                    )?
                    .reply()?;
                if reply.type_ == self.utf8 || reply.type_ == u32::from(xproto::AtomEnum::STRING) {
                    let text = String::from_utf8_lossy(&reply.value).into_owned();
                    tracing::debug!(bytes = text.len(), "Text copied on the X display");
                    let _ = copied.send(text);
                }
            }
            Event::SelectionRequest(e) => self.answer(&e)?,
            Event::SelectionClear(e) if e.selection == self.clipboard => {
                *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Answers an application that pastes what this worker owns.
    fn answer(&self, e: &xproto::SelectionRequestEvent) -> anyhow::Result<()> {
        let property = if e.property == x11rb::NONE {
            e.target
        } else {
            e.property
        };
        let string = u32::from(xproto::AtomEnum::STRING);
        let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stored = match &owned {
            Some(_) if e.selection != self.clipboard => false,
            Some(_) if e.target == self.targets => {
                let offered = [self.targets, self.utf8, self.text_atom, string];
                self.conn.change_property32(
                    xproto::PropMode::REPLACE,
                    e.requestor,
                    property,
                    xproto::AtomEnum::ATOM,
                    &offered,
                )?;
                true
            }
            Some(text)
                if e.target == self.utf8 || e.target == self.text_atom || e.target == string =>
            {
                let kind = if e.target == string {
                    string
                } else {
                    self.utf8
                };
                self.conn.change_property8(
                    xproto::PropMode::REPLACE,
                    e.requestor,
                    property,
                    kind,
                    text.as_bytes(),
                )?;
                true
            }
            _ => false,
        };
        let notify = xproto::SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: e.time,
            requestor: e.requestor,
            selection: e.selection,
            target: e.target,
            property: if stored { property } else { x11rb::NONE },
        };
        self.conn
            .send_event(false, e.requestor, xproto::EventMask::NO_EVENT, notify)?;
        self.conn.flush()?;
        Ok(())
    }
}
