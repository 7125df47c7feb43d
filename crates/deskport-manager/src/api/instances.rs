//! `/instances`: addresses, attached groups, the Remote Desktop switches, RD Gateway tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskport_api::v1::*;
use deskport_policy::GroupId;
use deskport_store::Instance;
use uuid::Uuid;

use super::ops;
use crate::auth::{Caller, ClientAddr};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Id, OptionalBody};
use crate::ops::InstanceInput;
use crate::state::AppState;

fn view(s: &AppState, i: &Instance) -> InstanceView {
    convert::instance(i, s.rdp_user.as_deref())
}

#[utoipa::path(get, path = "/instances", tag = "instances", responses((status = 200, body = InstanceList)))]
pub async fn list_instances(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<InstanceList>> {
    caller.user()?;
    let list = s.store.list_instances(&caller.visible()).await?;
    Ok(Json(InstanceList {
        instances: list.iter().map(|i| view(&s, i)).collect(),
    }))
}

/// Create an instance. It starts in the project's `default` group unless groups are given.
/// The answer holds the instance's agent token, shown only this once.
#[utoipa::path(post, path = "/instances", tag = "instances", request_body = CreateInstanceRequest,
    responses((status = 201, body = InstanceCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_instance(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<CreateInstanceRequest>,
) -> ApiResult<(StatusCode, Json<InstanceCreated>)> {
    let i = req.instance;
    let project = caller.target_project(i.project_id)?;
    let input = InstanceInput {
        name: &i.name,
        public_address: &i.public_address,
        internal_address: i.internal_address.as_deref(),
        security_groups: &i.security_groups,
    };
    let (instance, token) = ops(&s, &caller, addr)?
        .create_instance(project, input)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(InstanceCreated {
            instance: view(&s, &instance),
            agent_token: token,
        }),
    ))
}

#[utoipa::path(get, path = "/instances/{id}", tag = "instances",
    params(("id" = Uuid, Path)), responses((status = 200, body = InstanceEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(s): State<AppState>,
    caller: Caller,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<InstanceEnvelope>> {
    let instance = match &caller {
        Caller::Agent {
            instance_id,
            project_id,
        } if *instance_id == id => s.store.instance(&[*project_id], id).await?,
        // Another instance's agent: not found, as for any invisible object.
        Caller::Agent { .. } => return Err(ApiError::not_found("instance")),
        Caller::User(_) => s.store.instance(&caller.visible(), id).await?,
    };
    Ok(Json(InstanceEnvelope {
        instance: view(&s, &instance),
    }))
}

#[utoipa::path(delete, path = "/instances/{id}", tag = "instances",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_instance(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Switch Remote Desktop on or off, NLA-only on or off (the instance's RDP server follows
/// within a second), and gateway access on or off (the RD Gateway cuts live tunnels within a
/// second).
#[utoipa::path(put, path = "/instances/{id}/remote-desktop", tag = "instances", request_body = UpdateRemoteDesktop,
    params(("id" = Uuid, Path)), responses((status = 200, body = InstanceEnvelope), (status = 404, body = ErrorBody)))]
pub async fn set_remote_desktop(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
    Body(req): Body<UpdateRemoteDesktop>,
) -> ApiResult<Json<InstanceEnvelope>> {
    let updated = ops(&s, &caller, addr)?
        .set_remote_desktop(id, req.enabled, req.nla_only, req.gateway)
        .await?;
    Ok(Json(InstanceEnvelope {
        instance: view(&s, &updated),
    }))
}

/// Attach a security group of the instance's project.
#[utoipa::path(post, path = "/instances/{id}/security-groups", tag = "instances", request_body = AttachGroup,
    params(("id" = Uuid, Path)), responses((status = 200, body = InstanceEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach_group(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
    Body(req): Body<AttachGroup>,
) -> ApiResult<Json<InstanceEnvelope>> {
    let updated = ops(&s, &caller, addr)?
        .attach_group(id, &req.security_group)
        .await?;
    Ok(Json(InstanceEnvelope {
        instance: view(&s, &updated),
    }))
}

#[utoipa::path(delete, path = "/instances/{id}/security-groups/{group_id}", tag = "instances",
    params(("id" = Uuid, Path), ("group_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn detach_group(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id((id, group)): Id<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?
        .detach_group(id, GroupId(group))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mint an RD Gateway token for yourself to reach the instance through the gateway
/// (`gateway_path` on the manager's HTTPS address). Any member of the instance's project may,
/// readers included; remote connections and gateway access must be on. The token opens
/// tunnels until it expires (reusable meanwhile: a client opens several in one run) and is
/// shown only this once.
#[utoipa::path(post, path = "/instances/{id}/rdp-tokens", tag = "instances", request_body(content = CreateRdpToken, description = "Optional"),
    params(("id" = Uuid, Path)), responses((status = 201, body = RdpTokenCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_rdp_token(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
    OptionalBody(req): OptionalBody<CreateRdpToken>,
) -> ApiResult<(StatusCode, Json<RdpTokenCreated>)> {
    let (_, token, secret) = ops(&s, &caller, addr)?
        .mint_rdp_token(id, req.ttl_seconds)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RdpTokenCreated {
            token: secret,
            id: token.id,
            instance: token.instance_id,
            expires_at: deskport_api::rfc3339(token.expires_at),
            gateway_path: GATEWAY_PATH.to_owned(),
        }),
    ))
}

/// Your RD Gateway tokens for the instance (a project admin sees everyone's), oldest first,
/// revoked and expired ones included; never their secrets.
#[utoipa::path(get, path = "/instances/{id}/rdp-tokens", tag = "instances",
    params(("id" = Uuid, Path)), responses((status = 200, body = RdpTokenList), (status = 404, body = ErrorBody)))]
pub async fn list_rdp_tokens(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<RdpTokenList>> {
    let tokens = ops(&s, &caller, addr)?.rdp_tokens(id).await?;
    Ok(Json(RdpTokenList {
        rdp_tokens: tokens.iter().map(convert::rdp_token).collect(),
    }))
}

/// Revoke an RD Gateway token (your own; a project admin any of the project's): it opens no
/// more tunnels, and the gateway cuts those it opened within a second.
#[utoipa::path(delete, path = "/rdp-tokens/{id}", tag = "instances",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_rdp_token(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.revoke_rdp_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
