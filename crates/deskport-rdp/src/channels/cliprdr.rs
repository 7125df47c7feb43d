//! The clipboard channel (`cliprdr`, server role): its backend reports what the client does,
//! the session's desktop reports what its applications copy, and [`ClipboardSync`] (shared
//! with the client, `deskport-proto`) decides; this module connects the three.

use deskport_desktop::clipboard::{Clipboard as DesktopClipboard, ClipboardOwner};
use deskport_proto::clipboard::{ClipboardAction, ClipboardSync, FromPeer};
use deskport_proto::next;
use ironrdp_cliprdr::CliprdrServer;
use tokio::sync::mpsc::UnboundedReceiver;

/// What happened to the clipboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipboardEvent {
    /// The client reported this on the channel.
    Client(FromPeer),
    /// An application of the session copied this text.
    Copied(String),
}

/// The processor to attach to the acceptor (every connection offers the channel), and where
/// its events arrive.
pub fn processor() -> (CliprdrServer, UnboundedReceiver<FromPeer>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cliprdr = CliprdrServer::new(Box::new(deskport_proto::clipboard::Backend::new(tx)));
    (cliprdr, rx)
}

/// One session's clipboard.
#[derive(Debug)]
pub struct Clipboard {
    from_client: Option<UnboundedReceiver<FromPeer>>,
    owner: Option<ClipboardOwner>,
    copied: Option<UnboundedReceiver<String>>,
    sync: ClipboardSync,
}

impl Clipboard {
    /// The clipboard between the channel's events and the desktop's clipboard (`None` if the
    /// desktop has none).
    pub fn new(
        from_client: UnboundedReceiver<FromPeer>,
        desktop: Option<DesktopClipboard>,
    ) -> Self {
        let (owner, copied) = match desktop {
            Some(DesktopClipboard { owner, copied }) => (Some(owner), Some(copied)),
            None => (None, None),
        };
        Self {
            from_client: Some(from_client),
            owner,
            copied,
            sync: ClipboardSync::new(),
        }
    }

    /// The next event (never resolves once both sides are gone).
    pub async fn next(&mut self) -> ClipboardEvent {
        loop {
            tokio::select! {
                event = next(&mut self.from_client) => match event {
                    Some(event) => return ClipboardEvent::Client(event),
                    None => self.from_client = None,
                },
                text = next(&mut self.copied) => match text {
                    Some(text) => return ClipboardEvent::Copied(text),
                    None => self.copied = None,
                },
            }
        }
    }

    /// Handles `event`: the desktop takes the client's text at once; what the channel must
    /// carry is returned. `ready`: the channel is up.
    pub fn handle(&mut self, event: ClipboardEvent, ready: bool) -> Option<ClipboardAction> {
        let action = match event {
            ClipboardEvent::Client(event) => self.sync.from_peer(event),
            ClipboardEvent::Copied(text) => self.sync.copied(text, ready),
        };
        match action {
            Some(ClipboardAction::SetLocal(text)) => {
                if let Some(owner) = &self.owner {
                    if let Err(e) = owner.own(text) {
                        tracing::debug!(error = %e, "Clipboard");
                    }
                }
                None
            }
            other => other,
        }
    }
}
