//! deskport's RD Gateway: RDP carried through HTTPS (MS-TSGU's HTTP transport), so an
//! instance's desktop is reachable through the manager's port 443 while its port 3389 stays
//! closed.
//!
//! - [`packet`]: the transport's packets, both directions (the gateway's and a client's).
//! - [`ws`]: the WebSocket framing of the transport's WebSocket form.
//! - [`RdGateway`] (`http.rs`): the HTTP side — the WebSocket form (`RDG_OUT_DATA` upgraded
//!   with a handshake done here, since the method is not GET and FreeRDP's key is not base64)
//!   and the legacy form (an `RDG_OUT_DATA` response streaming to the client, an `RDG_IN_DATA`
//!   chunked request streaming from it, paired by `RDG-Connection-Id`) — as routes any axum
//!   application mounts on its HTTPS listener at [`PATH`].
//! - [`client`]: the WebSocket form's client side (`deskport connect --gateway`).
//! - `tunnel.rs`: one tunnel's life — handshake, tunnel create (the PAA cookie checked by the
//!   [`Authorizer`]), tunnel authorize, channel create (only the granted instance's RDP
//!   service), then DATA both ways until either end closes or the grant is withdrawn.
//!
//! The gateway decides nothing about who may reach what: an [`Authorizer`] (the manager's
//! store, or a manager reached over its API) grants a token one instance's RDP service and
//! withdraws it when anything behind the grant changes; the gateway asks it again whenever it
//! [signals](Authorizer::changes) and cuts a tunnel it no longer grants.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

pub mod client;
mod http;
pub mod packet;
mod tunnel;
pub mod ws;

pub use http::{RdGateway, Stats};

/// Where the transport's requests go (MS-TSGU 2.2.1).
pub const PATH: &str = "/remoteDesktopGateway/";

/// One token's grant: who, and the one RDP service their tunnels may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token the grant came from.
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub user: String,
    pub project_id: Uuid,
    pub instance_id: Uuid,
    pub instance: String,
    /// The RDP service the gateway connects to (the instance's internal address).
    pub target: SocketAddr,
    /// The names a client may ask for (compared without case): the instance's name and its
    /// addresses.
    pub resources: Vec<String>,
    /// The ports a client may ask for (the public and the internal RDP port).
    pub ports: Vec<u16>,
}

impl Grant {
    /// Whether a channel to `resource`:`port` is this grant's instance.
    pub fn allows(&self, resource: &str, port: u16) -> bool {
        let resource = resource.trim().trim_end_matches('.');
        let resource = resource
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(resource);
        self.ports.contains(&port)
            && self
                .resources
                .iter()
                .any(|r| r.eq_ignore_ascii_case(resource))
    }
}

/// Why a token is refused or a grant withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// For the audit log and the gateway's log (never sent to the client, which gets only an
    /// HRESULT).
    pub reason: String,
}

/// What a refusal means to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The token is unknown, expired or revoked (E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED).
    Token,
    /// The token is good, but the instance or the user may not be reached now: a switch is
    /// off, the user left the project (E_PROXY_NAP_ACCESSDENIED).
    Policy,
    /// The authorizer could not answer (E_PROXY_INTERNALERROR).
    Unavailable,
}

impl Refusal {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    /// The HRESULT a client gets.
    pub fn hresult(&self) -> u32 {
        match self.kind {
            RefusalKind::Token => packet::hresult::E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED,
            RefusalKind::Policy => packet::hresult::E_PROXY_NAP_ACCESSDENIED,
            RefusalKind::Unavailable => packet::hresult::E_PROXY_INTERNALERROR,
        }
    }
}

/// What happened to a tunnel, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A channel to the instance is open: RDP flows.
    Opened {
        client_name: String,
        transport: &'static str,
    },
    /// The tunnel ended; bytes each way.
    Closed {
        to_instance: u64,
        to_client: u64,
        why: String,
    },
    /// The grant was withdrawn while the tunnel was open: it was cut.
    Cut { reason: String },
    /// A tunnel or a channel was refused before any RDP byte flowed.
    Refused { reason: String },
}

/// Who may reach what: the gateway's one question, asked when a tunnel opens and again
/// whenever [`changes`](Authorizer::changes) moves.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + std::fmt::Debug + 'static {
    /// The grant of the PAA cookie a client at `peer` presented. A refusal is recorded here
    /// (the authorizer knows whose token it was); the gateway records every other event.
    async fn open(&self, cookie: &str, peer: SocketAddr) -> Result<Grant, Refusal>;
    /// Whether a live tunnel's grant still holds (its token may have expired since it
    /// opened: expiry bounds opening, not the session).
    async fn recheck(&self, grant: &Grant) -> Result<(), Refusal>;
    /// Moves whenever a grant may have changed (a switch, a membership, a token revoked).
    fn changes(&self) -> watch::Receiver<u64>;
    /// Records what happened (audit); `grant` is `None` for a refusal before one.
    async fn record(&self, peer: SocketAddr, grant: Option<&Grant>, event: Event);
}

/// The gateway's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tunnels at once (open or being set up); beyond it a request gets 503.
    pub max_tunnels: usize,
    /// From the request to the channel's creation.
    pub setup_timeout: Duration,
    /// A keepalive to the client after this long without anything to send it.
    pub keepalive: Duration,
    /// Connecting to the instance's RDP service.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tunnels: 256,
            setup_timeout: Duration::from_secs(20),
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The fuzzing oracle (see `fuzz/`): the bytes as a client's packet stream and as WebSocket
/// frames carrying one, cut at every point the first byte chooses: decoding never panics, and
/// every packet decoded re-encodes to bytes that decode to a packet encoding the same again.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let check = |decoder: &mut packet::Decoder| {
        while let Ok(Some(p)) = decoder.next_packet() {
            let once = p.encode();
            match packet::decode(&once) {
                Ok(again) => assert_eq!(again.encode(), once, "re-encoding is stable"),
                Err(e) => panic!("an encoded packet does not decode: {e}"),
            }
        }
    };
    let mut packets = packet::Decoder::new(packet::HEADER + 2 + packet::MAX_DATA);
    for chunk in data.chunks(step) {
        packets.extend(chunk);
        check(&mut packets);
    }
    let mut frames = ws::Decoder::new(128 * 1024);
    let mut carried = packet::Decoder::new(packet::HEADER + 2 + packet::MAX_DATA);
    for chunk in data.chunks(step) {
        frames.extend(chunk);
        while let Ok(Some(frame)) = frames.next_frame() {
            if let ws::Frame::Binary(payload) = frame {
                carried.extend(&payload);
                check(&mut carried);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_allows_its_instance_only() {
        let grant = Grant {
            token_id: Uuid::nil(),
            user_id: Uuid::nil(),
            user: "alice".into(),
            project_id: Uuid::nil(),
            instance_id: Uuid::nil(),
            instance: "desk".into(),
            target: "127.0.0.1:13389".parse().unwrap_or_else(|_| unreachable!()),
            resources: vec!["desk".into(), "198.51.100.7".into(), "::1".into()],
            ports: vec![3389],
        };
        assert!(grant.allows("DESK", 3389));
        assert!(grant.allows("desk.", 3389));
        assert!(grant.allows("198.51.100.7", 3389));
        assert!(grant.allows("[::1]", 3389));
        assert!(!grant.allows("desk", 22));
        assert!(!grant.allows("other", 3389));
        assert!(!grant.allows("198.51.100.8", 3389));
    }
}
