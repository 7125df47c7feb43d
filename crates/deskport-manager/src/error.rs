//! The one error type of every handler: a status code and the JSON body
//! `{"error": {"code", "message", "field"}, "details": [...]}`. Internal causes are logged,
//! never sent: a client sees a generic message and a correlation-free 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deskport_api::v1::{ErrorBody, ErrorDetail};
use deskport_policy::{ErrorKind, Rejected};
use deskport_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub details: Vec<ErrorDetail>,
    /// Extra response headers (e.g. `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            field: None,
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, context, "Internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the manager's log has the details",
        )
    }
}

impl From<Rejected> for ApiError {
    fn from(rejected: Rejected) -> Self {
        let first = rejected.first();
        let status = match first.code.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
        };
        let detail = |e: &deskport_policy::FieldError| ErrorDetail {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            field: e.field.map(str::to_owned),
        };
        Self {
            status,
            code: first.code.as_str().to_owned(),
            message: first.message.clone(),
            field: first.field.map(str::to_owned),
            details: if rejected.0.len() > 1 {
                rejected.0.iter().map(detail).collect()
            } else {
                Vec::new()
            },
            retry_after: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { what } => ApiError::not_found(what),
            StoreError::Rejected(r) => r.into(),
            StoreError::Conflict {
                code,
                field,
                message,
            } => {
                let e = ApiError::new(StatusCode::CONFLICT, code, message);
                match field {
                    Some(f) => e.field(f),
                    None => e,
                }
            }
            other => ApiError::internal("store", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = secs.to_string().parse() {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
