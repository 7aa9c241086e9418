//! The one error type of the API: logs details, answers clean JSON
//! `{"error": "...", "details": ...}`; internals never reach clients.

use axum::http::header::RETRY_AFTER;
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A parameter or body is wrong; `details` says which and why.
    #[error("{message}")]
    BadRequest { message: String, details: Value },
    /// Refused events (400: malformed, 422: valid JSON that breaks the
    /// rules of its type); `details` lists every error, `dead_letters` how
    /// many rows were stored for them (when any were).
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        message: String,
        details: Value,
        dead_letters: Option<usize>,
    },
    /// The resource exists already.
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// No key, or a malformed, unknown or revoked one (401).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A valid key without the scope the route needs (403).
    #[error("forbidden: needs scope {required}")]
    Forbidden { required: &'static str },
    /// Over the rate limit; retry after this many seconds.
    #[error("rate limited for {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// A dependency is down; the client may retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad_param(param: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        AppError::BadRequest {
            message: format!("invalid parameter {param}: {why}"),
            details: json!({"parameter": param, "reason": why}),
        }
    }
}

impl From<sink::SinkError> for AppError {
    fn from(e: sink::SinkError) -> Self {
        match &e {
            sink::SinkError::Pool(_) => AppError::Unavailable(e.to_string()),
            sink::SinkError::Postgres(pg) if pg.is_closed() || pg.as_db_error().is_none() => {
                AppError::Unavailable(e.to_string())
            }
            _ => AppError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            AppError::BadRequest { message, details } => (
                StatusCode::BAD_REQUEST,
                json!({"error": message, "details": details}),
            ),
            AppError::Rejected {
                status,
                message,
                details,
                dead_letters,
            } => {
                let mut body = json!({"error": message, "details": details});
                if let Some(n) = dead_letters {
                    body["dead_letters"] = json!(n);
                }
                (*status, body)
            }
            AppError::Conflict(message) => (
                StatusCode::CONFLICT,
                json!({"error": message, "details": null}),
            ),
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "details": null}),
            ),
            AppError::Unauthorized(message) => {
                let body = json!({
                    "error": message,
                    "details": {"hint": "send Authorization: Bearer <key> or X-API-Key: <key>"},
                });
                return (
                    StatusCode::UNAUTHORIZED,
                    [(WWW_AUTHENTICATE, "Bearer realm=\"analytics\"")],
                    Json(body),
                )
                    .into_response();
            }
            AppError::RateLimited { retry_after_s } => {
                let body = json!({
                    "error": "rate limit exceeded",
                    "details": {"retry_after_seconds": retry_after_s},
                });
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(RETRY_AFTER, retry_after_s.to_string())],
                    Json(body),
                )
                    .into_response();
            }
            AppError::Forbidden { required } => (
                StatusCode::FORBIDDEN,
                json!({"error": "api key lacks the required scope", "details": {"required_scope": required}}),
            ),
            AppError::Unavailable(detail) => {
                error!(error = %detail, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "database unavailable, retry later", "details": null}),
                )
            }
            AppError::Internal(detail) => {
                error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error", "details": null}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
