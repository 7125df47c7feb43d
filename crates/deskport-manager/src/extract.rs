//! Extractors whose rejections are JSON errors with stable codes, like every other error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body: 415 without `Content-Type: application/json`, 400 `malformed_json`
/// for bad syntax, 400 `invalid_body` for unknown fields or wrong types (the field is named
/// when serde names it), 413 when larger than the configured limit.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(json_error(&rejection)),
        }
    }
}

/// A JSON request body that may be left out: no body and no `Content-Type` is `T::default()`;
/// anything else is read as [`Body`] reads it.
#[derive(Debug)]
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let empty = !headers.contains_key(axum::http::header::CONTENT_TYPE)
            && headers
                .get(axum::http::header::CONTENT_LENGTH)
                .is_none_or(|n| n.as_bytes() == b"0")
            && !headers.contains_key(axum::http::header::TRANSFER_ENCODING);
        if empty {
            return Ok(OptionalBody(T::default()));
        }
        Body::from_request(req, state)
            .await
            .map(|Body(v)| OptionalBody(v))
    }
}

fn json_error(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", inner(e)),
        ),
        JsonRejection::JsonDataError(e) => {
            let text = inner(e);
            let field = field_of(&text);
            let error = ApiError::bad_request("invalid_body", text);
            match field {
                Some(f) => error.field(&f),
                None => error,
            }
        }
        JsonRejection::BytesRejection(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        ),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// The innermost message of a rejection (serde's, with its path).
fn inner(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// serde_path_to_error style `a.b: message`, or serde's "unknown field `x`".
fn field_of(message: &str) -> Option<String> {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        return rest.split('`').next().map(str::to_owned);
    }
    let (path, _) = message.split_once(": ")?;
    (!path.contains(' ') && !path.is_empty())
        .then(|| path.rsplit('.').next().unwrap_or(path).to_owned())
}

/// A path parameter; a malformed id is simply "not found".
#[derive(Debug)]
pub struct Id<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Id(v))
            .map_err(|e: PathRejection| {
                tracing::debug!(error = %e, "Bad path parameter");
                ApiError::not_found("resource")
            })
    }
}

/// Query parameters: 400 `invalid_query` naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}
