//! `/instances`: addresses, attached groups, the Remote Desktop switches.

use std::net::{IpAddr, SocketAddr};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskport_api::v1::*;
use deskport_policy::GroupId;
use deskport_store::{Instance, NewInstance, Role};
use uuid::Uuid;

use super::actor;
use crate::auth::{new_token, Caller, ClientAddr};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Id};
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

/// `IP` or `IP:PORT` (IPv6 with a port in brackets).
fn address(text: &str, field: &str, default_port: u16) -> ApiResult<(IpAddr, u16)> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, default_port));
    }
    match text.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok((sa.ip(), sa.port())),
        _ => Err(ApiError::bad_request(
            "invalid_address",
            format!("{field} {text:?} is not an IP address or IP:PORT"),
        )
        .field(field)),
    }
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
    let user = caller.require(project, Role::Member)?;
    if !deskport_policy::valid_name(&i.name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "an instance name is 1-255 characters, without control characters or surrounding spaces",
        )
        .field("name"));
    }
    let (public_address, public_rdp_port) = address(&i.public_address, "public_address", 3389)?;
    let (internal_address, rdp_port) = match &i.internal_address {
        Some(text) => {
            let (ip, port) = address(text, "internal_address", 3389)?;
            (Some(ip), port)
        }
        None => (None, 3389),
    };
    let visible = [project];
    let all = s.store.list_groups(&visible).await?;
    let mut groups = Vec::new();
    for text in &i.security_groups {
        let found = all
            .iter()
            .find(|g| g.group.name == *text || g.group.id.to_string() == *text)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "security_group_not_found",
                    format!("there is no security group {text:?}"),
                )
                .field("security_groups")
            })?;
        groups.push(found.group.id);
    }
    let (token, hash) = new_token("dpa_");
    let instance = s
        .store
        .create_instance(
            &actor(user, addr),
            &NewInstance {
                project_id: project,
                name: i.name.clone(),
                public_address,
                public_rdp_port,
                internal_address,
                rdp_port,
                groups,
                agent_token_hash: hash,
            },
        )
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
    caller.user()?;
    let instance = s.store.instance(&caller.visible(), id).await?;
    let user = caller.require(instance.project_id, Role::Member)?;
    s.store.delete_instance(&actor(user, addr), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Switch Remote Desktop on or off, and NLA-only on or off (the instance's RDP server follows
/// within a second).
#[utoipa::path(put, path = "/instances/{id}/remote-desktop", tag = "instances", request_body = UpdateRemoteDesktop,
    params(("id" = Uuid, Path)), responses((status = 200, body = InstanceEnvelope), (status = 404, body = ErrorBody)))]
pub async fn set_remote_desktop(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
    Body(req): Body<UpdateRemoteDesktop>,
) -> ApiResult<Json<InstanceEnvelope>> {
    caller.user()?;
    let instance = s.store.instance(&caller.visible(), id).await?;
    let user = caller.require(instance.project_id, Role::Member)?;
    let updated = s
        .store
        .set_remote_desktop(&actor(user, addr), id, req.enabled, req.nla_only)
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
    caller.user()?;
    let instance = s.store.instance(&caller.visible(), id).await?;
    let user = caller.require(instance.project_id, Role::Member)?;
    let groups = s.store.list_groups(&[instance.project_id]).await?;
    let group = groups
        .iter()
        .find(|g| {
            g.group.name == req.security_group || g.group.id.to_string() == req.security_group
        })
        .ok_or_else(|| ApiError::not_found("security group").field("security_group"))?;
    let updated = s
        .store
        .attach_group(&actor(user, addr), id, group.group.id)
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
    caller.user()?;
    let instance = s.store.instance(&caller.visible(), id).await?;
    let user = caller.require(instance.project_id, Role::Member)?;
    s.store
        .detach_group(&actor(user, addr), id, GroupId(group))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
