//! The RD Gateway's authority in the manager: tokens checked against the store, grants
//! rechecked whenever the store says access may have changed (here or on another replica),
//! every tunnel and refusal in the audit log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use deskport_api::v1;
use deskport_gateway::{Authorizer, Event, Grant, Refusal, RefusalKind};
use deskport_store::{GatewayEvent, GatewayGrant, GrantRefusal, Refused, Store};
use tokio::sync::watch;

/// [`Authorizer`] over the manager's store.
#[derive(Debug, Clone)]
pub struct StoreAuthorizer {
    store: Arc<Store>,
}

impl StoreAuthorizer {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// The gateway's view of a store grant: the instance's RDP service on its internal address
/// (else the public one), and the names and ports a client may ask for.
pub fn grant_of(grant: &GatewayGrant) -> Grant {
    let i = &grant.instance;
    let address: IpAddr = i.internal_address.unwrap_or(i.public_address);
    let mut resources = vec![i.name.clone(), i.public_address.to_string()];
    if let Some(internal) = i.internal_address.filter(|a| *a != i.public_address) {
        resources.push(internal.to_string());
    }
    let mut ports = vec![i.public_rdp_port, i.rdp_port];
    ports.dedup();
    Grant {
        token_id: grant.token_id,
        user_id: grant.user_id,
        user: grant.user_name.clone(),
        project_id: grant.project_id,
        instance_id: i.id,
        instance: i.name.clone(),
        target: SocketAddr::new(address, i.rdp_port),
        resources,
        ports,
    }
}

/// What a store refusal means to a client.
pub fn refusal_of(refused: &Refused) -> Refusal {
    let kind = match refused.reason {
        GrantRefusal::UnknownToken | GrantRefusal::Expired | GrantRefusal::Revoked => {
            RefusalKind::Token
        }
        GrantRefusal::RemoteDesktopOff
        | GrantRefusal::GatewayOff
        | GrantRefusal::NotMember
        | GrantRefusal::InstanceGone => RefusalKind::Policy,
    };
    Refusal::new(kind, refused.reason.to_string())
}

/// A grant on the wire (`deskport rd-gateway` asks the manager over HTTPS).
pub fn grant_to_wire(g: &Grant) -> v1::GatewayGrant {
    v1::GatewayGrant {
        token_id: g.token_id,
        user_id: g.user_id,
        user: g.user.clone(),
        project_id: g.project_id,
        instance_id: g.instance_id,
        instance: g.instance.clone(),
        target: g.target.to_string(),
        resources: g.resources.clone(),
        ports: g.ports.clone(),
    }
}

/// A grant from the wire.
pub fn grant_from_wire(g: &v1::GatewayGrant) -> Result<Grant, String> {
    Ok(Grant {
        token_id: g.token_id,
        user_id: g.user_id,
        user: g.user.clone(),
        project_id: g.project_id,
        instance_id: g.instance_id,
        instance: g.instance.clone(),
        target: g
            .target
            .parse()
            .map_err(|_| format!("target {:?} is not IP:PORT", g.target))?,
        resources: g.resources.clone(),
        ports: g.ports.clone(),
    })
}

pub fn refusal_to_wire(r: &Refusal) -> v1::GatewayRefusal {
    v1::GatewayRefusal {
        kind: match r.kind {
            RefusalKind::Token => "token",
            RefusalKind::Policy => "policy",
            RefusalKind::Unavailable => "unavailable",
        }
        .to_owned(),
        reason: r.reason.clone(),
    }
}

pub fn refusal_from_wire(r: &v1::GatewayRefusal) -> Refusal {
    let kind = match r.kind.as_str() {
        "token" => RefusalKind::Token,
        "policy" => RefusalKind::Policy,
        _ => RefusalKind::Unavailable,
    };
    Refusal::new(kind, r.reason.clone())
}

/// An event on the wire (with its peer and grant).
pub fn event_to_wire(
    peer: SocketAddr,
    grant: Option<&Grant>,
    event: &Event,
) -> v1::GatewayEventReport {
    let (kind, detail, to_instance, to_client) = match event {
        Event::Opened {
            client_name,
            transport,
        } => ("opened", format!("{client_name}\n{transport}"), 0, 0),
        Event::Closed {
            to_instance,
            to_client,
            why,
        } => ("closed", why.clone(), *to_instance, *to_client),
        Event::Cut { reason } => ("cut", reason.clone(), 0, 0),
        Event::Refused { reason } => ("refused", reason.clone(), 0, 0),
    };
    v1::GatewayEventReport {
        peer: peer.to_string(),
        grant: grant.map(grant_to_wire),
        event: kind.to_owned(),
        detail,
        to_instance,
        to_client,
    }
}

/// An event from the wire.
pub fn event_from_wire(report: &v1::GatewayEventReport) -> Result<Event, String> {
    let detail = report.detail.clone();
    Ok(match report.event.as_str() {
        "opened" => {
            let (client_name, transport) = detail.split_once('\n').unwrap_or((&detail, ""));
            Event::Opened {
                client_name: client_name.to_owned(),
                transport: match transport {
                    "websocket" => "websocket",
                    "http" => "http",
                    _ => "unknown",
                },
            }
        }
        "closed" => Event::Closed {
            to_instance: report.to_instance,
            to_client: report.to_client,
            why: detail,
        },
        "cut" => Event::Cut { reason: detail },
        "refused" => Event::Refused { reason: detail },
        other => {
            return Err(format!(
                "event {other:?} is not opened, closed, cut or refused"
            ))
        }
    })
}

fn unavailable(e: &deskport_store::StoreError) -> Refusal {
    tracing::warn!(error = %e, "RD Gateway: the store cannot answer");
    Refusal::new(
        RefusalKind::Unavailable,
        "the manager's database cannot answer",
    )
}

#[async_trait::async_trait]
impl Authorizer for StoreAuthorizer {
    async fn open(&self, cookie: &str, peer: SocketAddr) -> Result<Grant, Refusal> {
        match self.store.gateway_grant(cookie).await {
            Ok(Ok(grant)) => Ok(grant_of(&grant)),
            Ok(Err(refused)) => {
                let refusal = refusal_of(&refused);
                let summary = format!("RD Gateway tunnel from {peer} refused: {}", refused.reason);
                if let Err(e) = self
                    .store
                    .audit_gateway(
                        refused.user_id,
                        refused.project_id,
                        refused.instance_id,
                        GatewayEvent::Refused,
                        summary,
                        Some(peer.ip().to_string()),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "RD Gateway: cannot audit a refusal");
                }
                Err(refusal)
            }
            Err(e) => Err(unavailable(&e)),
        }
    }

    async fn recheck(&self, grant: &Grant) -> Result<(), Refusal> {
        match self.store.recheck_grant(grant.token_id).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refused)) => Err(refusal_of(&refused)),
            // A database that cannot answer does not cut live sessions (agents likewise keep
            // the last policy they know); the next change rechecks again.
            Err(e) => {
                unavailable(&e);
                Ok(())
            }
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.store.access_changes()
    }

    async fn record(&self, peer: SocketAddr, grant: Option<&Grant>, event: Event) {
        let (kind, summary) = match (&event, grant) {
            (
                Event::Opened {
                    client_name,
                    transport,
                },
                Some(g),
            ) => (
                GatewayEvent::Opened,
                format!(
                    "{}: RD Gateway tunnel opened for {} from {peer} (client {client_name:?}, {transport})",
                    g.instance, g.user
                ),
            ),
            (
                Event::Closed {
                    to_instance,
                    to_client,
                    why,
                },
                Some(g),
            ) => (
                GatewayEvent::Closed,
                format!(
                    "{}: RD Gateway tunnel of {} from {peer} closed: {why} ({to_instance} bytes to the instance, {to_client} to the client)",
                    g.instance, g.user
                ),
            ),
            (Event::Cut { reason }, Some(g)) => (
                GatewayEvent::Closed,
                format!(
                    "{}: RD Gateway tunnel of {} from {peer} cut: {reason}",
                    g.instance, g.user
                ),
            ),
            (Event::Refused { reason }, Some(g)) => (
                GatewayEvent::Refused,
                format!(
                    "{}: RD Gateway tunnel of {} from {peer} refused: {reason}",
                    g.instance, g.user
                ),
            ),
            (Event::Refused { reason }, None) => (
                GatewayEvent::Refused,
                format!("RD Gateway tunnel from {peer} refused: {reason}"),
            ),
            (_, None) => return,
        };
        let result = self
            .store
            .audit_gateway(
                grant.map(|g| g.user_id),
                grant.map(|g| g.project_id),
                grant.map(|g| g.instance_id),
                kind,
                summary,
                Some(peer.ip().to_string()),
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "RD Gateway: cannot audit a tunnel's event");
        }
    }
}
