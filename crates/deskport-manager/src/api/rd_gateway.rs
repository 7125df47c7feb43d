// utoipa's path macro qualifies extractor types in its expansion.
#![allow(unused_qualifications)]

//! What an RD Gateway on its own host (`deskport rd-gateway`) asks the manager: a token's
//! grant, whether a live tunnel's grant still holds, when to ask again, and what to audit.
//! Only administrators' tokens may ask (a gateway decides nothing itself; what it is told
//! opens a way to any instance).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskport_api::v1::*;
use deskport_gateway::Authorizer as _;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Id, Query};
use crate::gateway::{self, StoreAuthorizer};
use crate::state::AppState;

fn require_gateway(caller: &Caller) -> ApiResult<()> {
    match caller.user()?.is_admin {
        true => Ok(()),
        false => Err(ApiError::forbidden(
            "only administrators' tokens may act as an RD Gateway",
        )),
    }
}

fn peer(text: &str) -> ApiResult<SocketAddr> {
    text.parse().map_err(|_| {
        ApiError::bad_request("invalid_peer", "peer is the client's IP:PORT").field("peer")
    })
}

/// The grant of a token a client presented (a refusal is audited here).
#[utoipa::path(post, path = "/rd-gateway/grants", tag = "rd-gateway", request_body = GatewayOpen,
    responses((status = 200, body = GatewayDecision)))]
pub async fn open(
    State(s): State<AppState>,
    caller: Caller,
    Body(request): Body<GatewayOpen>,
) -> ApiResult<Json<GatewayDecision>> {
    require_gateway(&caller)?;
    let peer = peer(&request.peer)?;
    let decision = match StoreAuthorizer::new(s.store.clone())
        .open(&request.token, peer)
        .await
    {
        Ok(grant) => GatewayDecision {
            grant: Some(gateway::grant_to_wire(&grant)),
            refusal: None,
        },
        Err(refusal) => GatewayDecision {
            grant: None,
            refusal: Some(gateway::refusal_to_wire(&refusal)),
        },
    };
    Ok(Json(decision))
}

/// Whether a live tunnel's grant still holds (expiry aside).
#[utoipa::path(post, path = "/rd-gateway/grants/{token_id}/check", tag = "rd-gateway",
    params(("token_id" = Uuid, Path)), responses((status = 200, body = GatewayDecision)))]
pub async fn check(
    State(s): State<AppState>,
    caller: Caller,
    Id(token_id): Id<Uuid>,
) -> ApiResult<Json<GatewayDecision>> {
    require_gateway(&caller)?;
    let decision = match s.store.recheck_grant(token_id).await? {
        Ok(grant) => GatewayDecision {
            grant: Some(gateway::grant_to_wire(&gateway::grant_of(&grant))),
            refusal: None,
        },
        Err(refused) => GatewayDecision {
            grant: None,
            refusal: Some(gateway::refusal_to_wire(&gateway::refusal_of(&refused))),
        },
    };
    Ok(Json(decision))
}

/// Records a tunnel's event in the audit log.
#[utoipa::path(post, path = "/rd-gateway/events", tag = "rd-gateway",
    request_body = GatewayEventReport, responses((status = 204)))]
pub async fn event(
    State(s): State<AppState>,
    caller: Caller,
    Body(report): Body<GatewayEventReport>,
) -> ApiResult<StatusCode> {
    require_gateway(&caller)?;
    let peer = peer(&report.peer)?;
    let grant = report
        .grant
        .as_ref()
        .map(gateway::grant_from_wire)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_grant", e).field("grant"))?;
    let event = gateway::event_from_wire(&report)
        .map_err(|e| ApiError::bad_request("invalid_event", e).field("event"))?;
    StoreAuthorizer::new(s.store.clone())
        .record(peer, grant.as_ref(), event)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// The count last seen: the answer waits until it differs.
    after: Option<i64>,
    /// Seconds to wait, 0-60 (30).
    wait: Option<u64>,
}

/// The count of changes that may affect grants; with `after`, at once if it differs, else
/// when it changes, else after `wait` (the same count: nothing changed).
#[utoipa::path(get, path = "/rd-gateway/changes", tag = "rd-gateway", params(ChangesQuery),
    responses((status = 200, body = GatewayChanges)))]
pub async fn changes(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ChangesQuery>,
) -> ApiResult<Json<GatewayChanges>> {
    require_gateway(&caller)?;
    let wait = match q.wait {
        Some(w) if w > 60 => {
            return Err(
                ApiError::bad_request("invalid_query", "wait is 0-60 seconds").field("wait"),
            )
        }
        w => Duration::from_secs(w.unwrap_or(30)),
    };
    let mut rx = s.store.access_changes();
    if let Some(after) = q.after {
        let after = u64::try_from(after).map_err(|_| {
            ApiError::bad_request("invalid_query", "after is a count, 0 or more").field("after")
        })?;
        let _ = tokio::time::timeout(wait, rx.wait_for(|c| *c != after)).await;
    }
    let changes = *rx.borrow();
    Ok(Json(GatewayChanges { changes }))
}
