//! Authentication: password hashing (argon2id), bearer and session tokens (random, stored as
//! SHA-256), the [`Caller`] every handler receives, and login throttling.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use deskport_store::{Principal, Store, User};
use rand::rngs::OsRng as SystemRng;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The session cookie of the console.
pub const SESSION_COOKIE: &str = "deskport_session";

/// An argon2id hash (PHC string) of `password`. CPU-heavy: call from `spawn_blocking`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hash a password: {e}"))
}

/// Whether `password` matches the PHC string `hash`. CPU-heavy: call from `spawn_blocking`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes or verifies on the blocking pool.
pub async fn hash_password_async(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("hash task", &e))?
        .map_err(|e| ApiError::internal("hash", &e))
}

/// A new random token with `prefix` (`dpt_` API, `dpa_` agent, `dps_` session) and its hash.
pub fn new_token(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; 32];
    SystemRng.fill_bytes(&mut bytes);
    let token = format!("{prefix}{}", hex(&bytes));
    let hash = token_hash(&token);
    (token, hash)
}

/// How a token is stored: its SHA-256, hex. Tokens are 256 random bits, so a fast hash is
/// enough (no dictionary to protect against).
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is calling: a user (with the projects it may see) or an instance's agent.
#[derive(Debug, Clone)]
pub enum Caller {
    User(User),
    Agent { instance_id: Uuid, project_id: Uuid },
}

impl Caller {
    /// The user, or 403 for agent tokens.
    pub fn user(&self) -> ApiResult<&User> {
        match self {
            Caller::User(u) => Ok(u),
            Caller::Agent { .. } => Err(ApiError::forbidden(
                "an agent token can only read its instance's policy and report its status",
            )),
        }
    }

    /// The projects this caller may see.
    pub fn visible(&self) -> Vec<Uuid> {
        match self {
            Caller::User(u) => u.project_ids(),
            Caller::Agent { .. } => Vec::new(),
        }
    }

    /// The project a create request goes to: the one given, else the caller's only project,
    /// else `default`.
    pub fn target_project(&self, given: Option<Uuid>) -> ApiResult<Uuid> {
        let user = self.user()?;
        if let Some(p) = given {
            return Ok(p);
        }
        match user.memberships.as_slice() {
            [only] => Ok(only.project_id),
            many => many
                .iter()
                .find(|m| m.project_name == "default")
                .map(|m| m.project_id)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "project_required",
                        "give project_id: you belong to several projects",
                    )
                    .field("project_id")
                }),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Store>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let store = Arc::<Store>::from_ref(state);
        if let Some(token) = bearer(parts) {
            return match store.principal_by_token(&token_hash(token)).await? {
                Some(Principal::User(u)) => Ok(Caller::User(u)),
                Some(Principal::Agent {
                    instance_id,
                    project_id,
                }) => Ok(Caller::Agent {
                    instance_id,
                    project_id,
                }),
                None => Err(ApiError::unauthorized("the bearer token is not valid")),
            };
        }
        // The console's session cookie authenticates API reads too (its forms carry CSRF
        // tokens; the API is not used with cookies for writes, see `console`).
        if let Some(session) = cookie(&parts.headers, SESSION_COOKIE) {
            if parts.method == axum::http::Method::GET {
                if let Some(s) = store.session(&token_hash(session), crate::now_ms()).await? {
                    return Ok(Caller::User(s.user));
                }
            }
        }
        Err(ApiError::unauthorized(
            "authentication required: send 'Authorization: Bearer TOKEN' (see 'deskport login')",
        ))
    }
}

/// The client's address (for the audit log and throttling).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| ClientAddr(addr.ip().to_canonical()))
            .ok_or_else(|| ApiError::internal("client address", &"no ConnectInfo"))
    }
}

/// 429 with `Retry-After`.
pub fn throttled(wait: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("too many failed logins; try again in {wait} s"),
    );
    e.retry_after = Some(wait);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "S3cret"));
        assert!(!verify_password("garbage", "s3cret"));
        let (t1, h1) = new_token("dpt_");
        let (t2, _) = new_token("dpt_");
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 4 + 64);
        assert_eq!(token_hash(&t1), h1);
    }
}
