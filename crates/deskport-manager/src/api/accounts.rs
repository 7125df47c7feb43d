//! `/auth/tokens`, `/projects` (with members), `/users`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskport_api::v1::*;
use uuid::Uuid;

use super::ops;
use crate::auth::{throttled, verify_password, Caller, ClientAddr};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Id};
use crate::state::AppState;

/// Checks a user name and password, with throttling per name and per source address.
/// Returns the user on success.
pub async fn login(
    s: &AppState,
    addr: std::net::IpAddr,
    username: &str,
    password: &str,
) -> ApiResult<deskport_store::User> {
    let keys = [format!("user:{username}"), format!("ip:{addr}")];
    // The attempt counts (in the database, for every replica) until it succeeds.
    if let Err(wait) = s
        .store
        .login_attempt(&s.limits, &keys, crate::now_ms())
        .await?
    {
        return Err(throttled(wait));
    }
    let found = s.store.user_auth(username).await?;
    // Verify against a dummy hash for unknown users, so timing does not reveal which exist.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, DUMMY_HASH.to_owned()),
    };
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .map_err(|e| ApiError::internal("verify task", &e))?;
    match user.filter(|_| ok) {
        Some(u) => {
            s.store
                .login_succeeded(&s.limits, &keys[0], &keys[1..])
                .await?;
            Ok(u)
        }
        None => {
            tracing::warn!(username, %addr, "Failed login");
            if let Some(lock) = s
                .store
                .login_failed(&s.limits, &keys, crate::now_ms())
                .await?
            {
                tracing::warn!(username, %addr, seconds = lock.as_secs(), "Login locked out after repeated failures");
            }
            Err(ApiError::unauthorized("wrong user name or password"))
        }
    }
}

/// argon2id of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Vm3m8QxZ+9dI6ZXkXoXqu4u1VJcQcdUzlz0ZZJxnUfM";

/// Exchange a user name and password for an API token. Repeated failures are throttled (429).
#[utoipa::path(post, path = "/auth/tokens", tag = "auth", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_token(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<TokenRequest>,
) -> ApiResult<(StatusCode, Json<TokenResponse>)> {
    let user = login(&s, addr, &req.username, &req.password).await?;
    let name = req.name.unwrap_or_else(|| format!("token from {addr}"));
    let (token, record) = s
        .ops(&user, addr, user.project_ids())
        .create_token(&name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token,
            token_id: record.id,
            user: convert::user(&user),
        }),
    ))
}

/// Your API tokens (names and dates; the secrets are not kept).
#[utoipa::path(get, path = "/auth/tokens", tag = "auth", responses((status = 200, body = TokenList)))]
pub async fn list_tokens(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<TokenList>> {
    let user = caller.user()?;
    let tokens = s.store.list_api_tokens(user.id).await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(convert::token).collect(),
    }))
}

#[utoipa::path(delete, path = "/auth/tokens/{id}", tag = "auth",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_token(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/projects", tag = "projects", responses((status = 200, body = ProjectList)))]
pub async fn list_projects(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ProjectList>> {
    caller.user()?;
    let projects = s.store.list_projects(&caller.visible()).await?;
    Ok(Json(ProjectList {
        projects: projects.iter().map(convert::project).collect(),
    }))
}

/// Create a project (administrators only); you become its admin. It gets a `default` group.
#[utoipa::path(post, path = "/projects", tag = "projects", request_body = CreateProjectRequest,
    responses((status = 201, body = ProjectEnvelope), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<CreateProjectRequest>,
) -> ApiResult<(StatusCode, Json<ProjectEnvelope>)> {
    let p = req.project;
    let project = ops(&s, &caller, addr)?
        .create_project(&p.name, &p.description)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectEnvelope {
            project: convert::project(&project),
        }),
    ))
}

#[utoipa::path(get, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path)), responses((status = 200, body = ProjectEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_project(
    State(s): State<AppState>,
    caller: Caller,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<ProjectEnvelope>> {
    caller.user()?;
    let project = s.store.project(&caller.visible(), id).await?;
    Ok(Json(ProjectEnvelope {
        project: convert::project(&project),
    }))
}

/// Delete a project and everything in it (project admins; not `default`).
#[utoipa::path(delete, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_project(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_project(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a user a role in a project (project admins).
#[utoipa::path(put, path = "/projects/{id}/members/{user_id}", tag = "projects", request_body = SetMembership,
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_member(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id((project, member)): Id<(Uuid, Uuid)>,
    Body(req): Body<SetMembership>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?
        .set_member(project, member, &req.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/projects/{id}/members/{user_id}", tag = "projects",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_member(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id((project, member)): Id<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?
        .remove_member(project, member)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users: administrators see all; others see themselves.
#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = UserList)))]
pub async fn list_users(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<UserList>> {
    let user = caller.user()?;
    let users = if user.is_admin {
        s.store.list_users().await?
    } else {
        vec![user.clone()]
    };
    Ok(Json(UserList {
        users: users.iter().map(convert::user).collect(),
    }))
}

/// Create a user (administrators only). Add it to projects with `PUT /projects/{id}/members/{user_id}`.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<UserEnvelope>)> {
    let u = req.user;
    let user = ops(&s, &caller, addr)?
        .create_user(&u.name, u.password, u.is_admin)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserEnvelope {
            user: convert::user(&user),
        }),
    ))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = Uuid, Path)), responses((status = 200, body = UserEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(s): State<AppState>,
    caller: Caller,
    Id(id): Id<Uuid>,
) -> ApiResult<Json<UserEnvelope>> {
    let me = caller.user()?;
    if me.id != id && !me.is_admin {
        return Err(ApiError::not_found("user"));
    }
    let user = s.store.user(id).await?;
    Ok(Json(UserEnvelope {
        user: convert::user(&user),
    }))
}

#[utoipa::path(delete, path = "/users/{id}", tag = "users",
    params(("id" = Uuid, Path)), responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(s): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    Id(id): Id<Uuid>,
) -> ApiResult<StatusCode> {
    ops(&s, &caller, addr)?.delete_user(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
