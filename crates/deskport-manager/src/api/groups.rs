// utoipa's path macro qualifies extractor types in its expansion.
#![allow(unused_qualifications)]

//! `/security-groups`, `/security-group-rules`, `/templates`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskport_api::v1::*;
use deskport_policy::{template::TEMPLATES, GroupId, RuleId, RuleSpec};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ops;
use crate::auth::{Caller, ClientAddr};
use crate::convert;
use crate::error::ApiResult;
use crate::extract::{Body, Id, Query};
use crate::state::AppState;

/// List the security groups of your projects, with their rules.
#[utoipa::path(get, path = "/security-groups", tag = "security-groups",
    responses((status = 200, body = GroupList), (status = 401, body = ErrorBody)))]
pub async fn list_groups(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<GroupList>> {
    caller.user()?;
    let groups = s.store.list_groups(&caller.visible()).await?;
    Ok(Json(GroupList {
        security_groups: groups.iter().map(convert::group).collect(),
    }))
}

/// Create a security group (empty; add rules to it).
#[utoipa::path(post, path = "/security-groups", tag = "security-groups", request_body = CreateGroupRequest,
    responses((status = 201, body = GroupEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<GroupEnvelope>)> {
    let g = req.security_group;
    let project = caller.target_project(g.project_id)?;
    let record = ops(&s, &caller, addr)?
        .create_group(project, &g.name, &g.description)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GroupEnvelope {
            security_group: convert::group(&record),
        }),
    ))
}

#[utoipa::path(get, path = "/security-groups/{id}", tag = "security-groups",
    params(("id" = Uuid, Path)), responses((status = 200, body = GroupEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(s): State<AppState>,
    caller: Caller,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<GroupEnvelope>> {
    caller.user()?;
    let record = s.store.group(&caller.visible(), GroupId(id)).await?;
    Ok(Json(GroupEnvelope {
        security_group: convert::group(&record),
    }))
}

/// Delete a security group. `default` cannot be deleted, nor a group attached to an instance
/// or used as another rule's remote.
#[utoipa::path(delete, path = "/security-groups/{id}", tag = "security-groups",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_group(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_group(GroupId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RuleFilter {
    /// Only the rules of this group.
    security_group_id: Option<Uuid>,
}

/// List rules (of one group with `security_group_id`).
#[utoipa::path(get, path = "/security-group-rules", tag = "security-groups", params(RuleFilter),
    responses((status = 200, body = RuleList), (status = 400, body = ErrorBody)))]
pub async fn list_rules(
    State(s): State<AppState>,
    caller: Caller,
    Query(filter): Query<RuleFilter>,
) -> ApiResult<Json<RuleList>> {
    caller.user()?;
    let visible = caller.visible();
    let groups = match filter.security_group_id {
        Some(id) => vec![s.store.group(&visible, GroupId(id)).await?],
        None => s.store.list_groups(&visible).await?,
    };
    let rules = groups
        .iter()
        .flat_map(|g| convert::group(g).security_group_rules)
        .collect();
    Ok(Json(RuleList {
        security_group_rules: rules,
    }))
}

/// Add a rule. Validation errors name the field (400); a duplicate or a full quota is 409.
/// The answer carries notices: a normalised CIDR, or a warning when SSH or RDP is opened to
/// the whole internet.
#[utoipa::path(post, path = "/security-group-rules", tag = "security-groups", request_body = CreateRuleRequest,
    responses((status = 201, body = RuleEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_rule(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<CreateRuleRequest>,
) -> ApiResult<(StatusCode, Json<RuleEnvelope>)> {
    let ops = ops(&s, &caller, addr)?;
    let r = req.security_group_rule;
    let spec = RuleSpec {
        template: r.template,
        direction: r.direction,
        ethertype: r.ethertype,
        protocol: r.protocol.map(|p| match p {
            ProtocolValue::Number(n) => n.to_string(),
            ProtocolValue::Name(n) => n,
        }),
        port_range_min: r.port_range_min,
        port_range_max: r.port_range_max,
        remote_ip_prefix: r.remote_ip_prefix,
        remote_group_id: r.remote_group_id,
        description: r.description,
    };
    let (record, notes) = ops.create_rule(GroupId(r.security_group_id), &spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(RuleEnvelope {
            security_group_rule: convert::rule(&record),
            notices: notes.iter().map(convert::notice).collect(),
        }),
    ))
}

#[utoipa::path(get, path = "/security-group-rules/{id}", tag = "security-groups",
    params(("id" = Uuid, Path)), responses((status = 200, body = RuleEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_rule(
    State(s): State<AppState>,
    caller: Caller,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<RuleEnvelope>> {
    caller.user()?;
    let record = s.store.rule(&caller.visible(), RuleId(id)).await?;
    Ok(Json(RuleEnvelope {
        security_group_rule: convert::rule(&record),
        notices: Vec::new(),
    }))
}

/// Delete a rule. Live connections it allowed are cut by the firewall agents.
#[utoipa::path(delete, path = "/security-group-rules/{id}", tag = "security-groups",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_rule(RuleId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The console's *Rule* menu: every rule template.
#[utoipa::path(get, path = "/templates", tag = "security-groups", responses((status = 200, body = TemplateList)))]
pub async fn list_templates(caller: Caller) -> ApiResult<Json<TemplateList>> {
    caller.user()?;
    Ok(Json(TemplateList {
        templates: TEMPLATES.iter().map(convert::template).collect(),
    }))
}
