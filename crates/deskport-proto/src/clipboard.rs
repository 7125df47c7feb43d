//! Text clipboard over the `cliprdr` static virtual channel (MS-RDPECLIP), for both roles.
//!
//! The channel's backend ([`Backend`]) only turns what the peer sends into [`FromPeer`] events;
//! the session loop feeds those, and what the local desktop copies, to a [`ClipboardSync`],
//! which answers with [`ClipboardAction`]s — what to send on the channel ([`perform`]) and
//! what to give the local desktop. Text only (CF_UNICODETEXT), fetched eagerly both ways:
//! - the peer copies → its format list offers text → we ask for it at once and, when it
//!   arrives, the local desktop owns it;
//! - the local desktop copies → we offer text → the peer asks for it → we answer.
//!
//! The one difference between the roles is the start: a client sends the channel's first
//! format list when the server asks for it ([`FromPeer::FormatListRequested`]); text copied
//! before the channel is ready is offered once it is ([`FromPeer::Ready`]).

use ironrdp_cliprdr::backend::CliprdrBackend;
use ironrdp_cliprdr::pdu::{
    ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, FileContentsRequest,
    FileContentsResponse, FormatDataRequest, FormatDataResponse, LockDataId,
};
use ironrdp_cliprdr::{Cliprdr, CliprdrSvcMessages, Role};
use tokio::sync::mpsc::UnboundedSender;

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

/// What the session does about the clipboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipboardAction {
    /// Send a format list: text when `text`, else an empty one (nothing to offer).
    Offer { text: bool },
    /// Ask the peer for its text.
    RequestText,
    /// Answer the peer's request with this text (`None`: an error response, nothing to give).
    SendText(Option<String>),
    /// Give the local desktop this text (the peer copied it).
    SetLocal(String),
}

/// The clipboard's state on one side of a connection: what the local desktop last copied and
/// whether the peer has been offered it. Events in, actions out; no I/O.
#[derive(Debug, Default)]
pub struct ClipboardSync {
    local_text: Option<String>,
    offered: bool,
}

impl ClipboardSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the local desktop copied last, if anything.
    pub fn local_text(&self) -> Option<&str> {
        self.local_text.as_deref()
    }

    /// The peer reported `event`.
    pub fn from_peer(&mut self, event: FromPeer) -> Option<ClipboardAction> {
        match event {
            FromPeer::Copied { text: true } => Some(ClipboardAction::RequestText),
            FromPeer::Copied { text: false } | FromPeer::Text(None) => None,
            FromPeer::Text(Some(text)) => Some(ClipboardAction::SetLocal(text)),
            FromPeer::WantsText => Some(ClipboardAction::SendText(self.local_text.clone())),
            // Text copied before the channel was ready could not be offered then: now.
            FromPeer::Ready if self.local_text.is_some() && !self.offered => {
                self.offered = true;
                Some(ClipboardAction::Offer { text: true })
            }
            FromPeer::Ready => None,
            // (Client role) the channel's first format list: what the local desktop has, maybe
            // nothing.
            FromPeer::FormatListRequested => {
                self.offered = self.local_text.is_some();
                Some(ClipboardAction::Offer { text: self.offered })
            }
        }
    }

    /// The local desktop copied `text`; `ready`: the channel is up (else it is offered when it
    /// is).
    pub fn copied(&mut self, text: String, ready: bool) -> Option<ClipboardAction> {
        self.local_text = Some(text);
        self.offered = ready;
        ready.then_some(ClipboardAction::Offer { text: true })
    }
}

/// Carries out a channel action on `cliprdr` (either role); the messages to send. Actions for
/// the local desktop ([`ClipboardAction::SetLocal`]) send nothing.
pub fn perform<R: Role>(
    cliprdr: &mut Cliprdr<R>,
    action: &ClipboardAction,
) -> ironrdp_pdu::PduResult<CliprdrSvcMessages<R>> {
    match action {
        ClipboardAction::Offer { text: true } => cliprdr.initiate_copy(&[text_format()]),
        ClipboardAction::Offer { text: false } => cliprdr.initiate_copy(&[]),
        ClipboardAction::RequestText => cliprdr.initiate_paste(ClipboardFormatId::CF_UNICODETEXT),
        ClipboardAction::SendText(text) => {
            cliprdr.submit_format_data(text_response(text.as_deref()))
        }
        ClipboardAction::SetLocal(_) => Ok(Vec::new().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClipboardAction::*;

    #[test]
    fn the_peers_copy_is_fetched_and_given_to_the_desktop() {
        let mut sync = ClipboardSync::new();
        assert_eq!(sync.from_peer(FromPeer::Copied { text: false }), None);
        assert_eq!(
            sync.from_peer(FromPeer::Copied { text: true }),
            Some(RequestText)
        );
        assert_eq!(
            sync.from_peer(FromPeer::Text(Some("hello".into()))),
            Some(SetLocal("hello".into()))
        );
        assert_eq!(sync.from_peer(FromPeer::Text(None)), None);
    }

    #[test]
    fn the_desktops_copy_is_offered_and_sent_when_asked() {
        let mut sync = ClipboardSync::new();
        assert_eq!(
            sync.from_peer(FromPeer::WantsText),
            Some(SendText(None)),
            "nothing copied yet: an error response"
        );
        assert_eq!(sync.copied("über".into(), true), Some(Offer { text: true }));
        assert_eq!(
            sync.from_peer(FromPeer::WantsText),
            Some(SendText(Some("über".into())))
        );
        assert_eq!(sync.from_peer(FromPeer::Ready), None, "already offered");
    }

    #[test]
    fn text_copied_before_the_channel_is_ready_is_offered_once_it_is() {
        // The race a client hit: the first (empty) format list went out, text was copied,
        // then the server's answer made the channel ready.
        let mut sync = ClipboardSync::new();
        assert_eq!(
            sync.from_peer(FromPeer::FormatListRequested),
            Some(Offer { text: false })
        );
        assert_eq!(sync.copied("late".into(), false), None);
        assert_eq!(sync.from_peer(FromPeer::Ready), Some(Offer { text: true }));
        assert_eq!(sync.from_peer(FromPeer::Ready), None, "offered once");
    }

    #[test]
    fn a_client_offers_what_it_has_in_its_first_format_list() {
        let mut sync = ClipboardSync::new();
        assert_eq!(sync.copied("early".into(), false), None);
        assert_eq!(
            sync.from_peer(FromPeer::FormatListRequested),
            Some(Offer { text: true })
        );
        assert_eq!(
            sync.from_peer(FromPeer::Ready),
            None,
            "offered in the first list"
        );
    }

    #[test]
    fn actions_become_cliprdr_messages_only_for_the_channel() {
        let mut server = ironrdp_cliprdr::CliprdrServer::new(Box::new(Backend::new(
            tokio::sync::mpsc::unbounded_channel().0,
        )));
        let messages = perform(&mut server, &SetLocal("x".into())).unwrap();
        assert!(Vec::from(messages).is_empty());
        assert!(
            perform(&mut server, &SendText(Some("x".into()))).is_err(),
            "nothing goes out before the channel is ready"
        );
    }
}
