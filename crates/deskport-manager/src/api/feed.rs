// utoipa's path macro qualifies extractor types in its expansion.
#![allow(unused_qualifications)]

//! `/audit-events` and the agents' endpoints (`/agent/policy` long poll, `/agent/report`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deskport_api::policy_doc::{PolicyDocument, RemoteDesktopDoc};
use deskport_api::v1::*;
use deskport_store::{AuditFilter, Role};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::ops;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// E.g. `security_group_rule.create`.
    action: Option<String>,
    /// A user name.
    actor: Option<String>,
    target_id: Option<String>,
    /// Only events newer than this id.
    after_id: Option<i64>,
    /// Only this project's events.
    project_id: Option<Uuid>,
    /// At most this many (1-1000, default 100), newest first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Who changed what, when and from where: every create and delete (administrators also see
/// the events of no project: users, tokens, refused RD Gateway tokens nobody knows).
#[utoipa::path(get, path = "/audit-events", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody)))]
pub async fn list_audit(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let admin = caller.user()?.is_admin;
    let mut visible = caller.visible();
    if let Some(p) = q.project_id {
        if !visible.contains(&p) {
            return Err(ApiError::not_found("project"));
        }
        visible = vec![p];
    }
    if q.limit.is_some_and(|l| l == 0 || l > 1000) {
        return Err(ApiError::bad_request("invalid_query", "limit is 1-1000").field("limit"));
    }
    let filter = AuditFilter {
        action: q.action,
        actor: q.actor,
        target_id: q.target_id,
        after_id: q.after_id,
        limit: q.limit.unwrap_or(100),
    };
    // Administrators also see the events of no project: users, tokens, RD Gateway refusals
    // of tokens nobody knows.
    let events = match admin && q.project_id.is_none() {
        true => s.store.list_audit_all(&filter).await?,
        false => s.store.list_audit(&visible, &filter).await?,
    };
    Ok(Json(AuditList {
        audit_events: events.iter().map(convert::audit).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    /// Answer only when the revision is newer than this one (long poll).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Seconds to wait for a newer revision (0-60, default 30); then 204.
    #[param(maximum = 60)]
    wait: Option<u64>,
    /// For user tokens: the project whose instances the document protects.
    project_id: Option<Uuid>,
}

/// The desired state an agent enforces. An instance's agent token gets its instance (and
/// the rest of its project as peers); a user token gets a whole project. With `after`, the
/// answer waits until the revision is newer (204 when `wait` runs out).
#[utoipa::path(get, path = "/agent/policy", tag = "agents", params(PolicyQuery),
    responses((status = 200, description = "The policy document (see deskport-api policy_doc)"), (status = 204), (status = 401, body = ErrorBody)))]
pub async fn agent_policy(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Response> {
    let (project, instance) = match &caller {
        Caller::Agent {
            instance_id,
            project_id,
        } => (*project_id, Some(*instance_id)),
        Caller::User(_) => {
            let project = caller.target_project(q.project_id)?;
            ops::require(caller.user()?, project, Role::Reader)?;
            (project, None)
        }
    };
    let wait = match q.wait {
        Some(w) if w > 60 => {
            return Err(
                ApiError::bad_request("invalid_query", "wait is 0-60 seconds").field("wait"),
            )
        }
        w => Duration::from_secs(w.unwrap_or(30)),
    };
    if let Some(after) = q.after {
        let after = u64::try_from(after).map_err(|_| {
            ApiError::bad_request("invalid_query", "after is a revision number, 0 or more")
                .field("after")
        })?;
        let mut rx = s.store.subscribe();
        let newer = tokio::time::timeout(wait, rx.wait_for(|r| *r > after)).await;
        if newer.is_err() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let state = s.store.agent_state(project, instance).await?;
    let mut doc = PolicyDocument::from_policy(&state.policy, state.revision);
    for (entry, record) in doc.instances.iter_mut().zip(&state.instances) {
        entry.remote_desktop = Some(RemoteDesktopDoc {
            enabled: record.rdp_enabled,
            nla_only: record.rdp_nla_only,
        });
    }
    Ok(Json(doc).into_response())
}

/// Normalises a SHA-256 fingerprint: 64 hex digits, with or without colons or a `SHA256:`
/// prefix, into lowercase colon-separated pairs.
fn fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .trim_start_matches("SHA256:")
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    Some(
        lower
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// An instance's agent reports its certificate fingerprint and the revision it enforces.
#[utoipa::path(post, path = "/agent/report", tag = "agents", request_body = AgentReport,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn agent_report(
    State(s): State<AppState>,
    caller: Caller,
    Body(report): Body<AgentReport>,
) -> ApiResult<StatusCode> {
    let Caller::Agent { instance_id, .. } = caller else {
        return Err(ApiError::forbidden(
            "only an instance's agent token can report its status",
        ));
    };
    let fp = match &report.cert_fingerprint {
        Some(text) => Some(fingerprint(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_fingerprint",
                "cert_fingerprint is a SHA-256 fingerprint: 64 hex digits",
            )
            .field("cert_fingerprint")
        })?),
        None => None,
    };
    s.store
        .report_agent(instance_id, fp.as_deref(), report.revision)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_are_normalised() {
        let hex = "AB".repeat(32);
        let want = vec!["ab"; 32].join(":");
        assert_eq!(super::fingerprint(&hex).as_deref(), Some(want.as_str()));
        assert_eq!(
            super::fingerprint(&format!("SHA256:{want}")).as_deref(),
            Some(want.as_str())
        );
        assert_eq!(super::fingerprint("abc"), None);
        assert_eq!(super::fingerprint(&"zz".repeat(32)), None);
    }
}
