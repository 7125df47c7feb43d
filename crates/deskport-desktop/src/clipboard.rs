//! A desktop's text clipboard on X11: the `CLIPBOARD` selection, text only (UTF8_STRING), read
//! and written by a worker thread with its own X connection. Both directions fetch eagerly,
//! so no X request waits on the network: an application's copy is converted to UTF-8 at once
//! and reported on [`Clipboard::copied`]; text from the peer is owned at once
//! ([`ClipboardOwner::own`]) and served to applications that paste.
//!
//! The RDP side (the `cliprdr` channel and what to do with its events) is `deskport-proto`'s.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::mpsc::UnboundedSender;
use x11rb::connection::Connection as _;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// Texts longer than this are not fetched from X (no INCR transfers).
const MAX_TEXT: u32 = 4 << 20;

/// Puts text on the desktop's clipboard (from any thread: the X connection is shared). When
/// the last clone drops, the worker thread ends.
#[derive(Debug, Clone)]
pub struct ClipboardOwner {
    worker: Arc<Worker>,
    _stop: Arc<StopOnDrop>,
}

impl ClipboardOwner {
    /// Owns `CLIPBOARD` with `text`: applications that paste get it.
    pub fn own(&self, text: String) -> anyhow::Result<()> {
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

/// A desktop's text clipboard: what its applications copy arrives on `copied`, and `owner`
/// gives them text to paste. On X11, a thread blocked on its own X connection (an unmapped
/// window, XFIXES selection events) — no polling.
#[derive(Debug)]
pub struct Clipboard {
    pub owner: ClipboardOwner,
    /// Texts the desktop's applications copied.
    pub copied: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Clipboard {
    /// Starts the worker on the X `display`.
    pub fn start_x(display: &str) -> anyhow::Result<Self> {
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
            owner: ClipboardOwner {
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
