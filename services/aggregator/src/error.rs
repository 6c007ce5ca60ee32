//! The aggregator's errors, and how the HTTP API shows them.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use sluice_core::ValidationError;

/// Everything that can fail inside the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    #[error("Postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Postgres migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    RedisTimeout(Duration),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ closed the consumer")]
    AmqpClosed,
    #[error("queue entry {entry_id}: {reason}")]
    Poison { entry_id: String, reason: String },
}

impl Error {
    /// Whether retrying cannot help: the data itself is refused by Postgres (SQLSTATE classes
    /// 22 data exception and 23 integrity violation).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            Self::Poison { .. } | Self::Config { .. } => true,
            _ => false,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An HTTP error answer: a status and a JSON body `{"error": kind, "detail": text, …}`.
#[derive(Debug)]
pub enum ApiError {
    BadJson(String),
    UnsupportedMediaType,
    TooLarge(usize),
    Invalid(ValidationError),
    BadQuery {
        field: &'static str,
        message: String,
    },
    RateLimited(Duration),
    QueueFull {
        retry_after: Duration,
    },
    Unavailable {
        dependency: &'static str,
        retry_after: Duration,
    },
    Timeout,
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, retry_after) = match self {
            Self::BadJson(detail) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "malformed_json", "detail": detail}),
                None,
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "unsupported_media_type", "detail": "Content-Type must be application/json"}),
                None,
            ),
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "body_too_large", "detail": format!("request body is over {limit} bytes")}),
                None,
            ),
            Self::Invalid(err) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "validation_error", "detail": err.to_string(), "index": err.index, "field": err.field}),
                None,
            ),
            Self::BadQuery { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "validation_error", "detail": format!("`{field}` {message}"), "field": field}),
                None,
            ),
            Self::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "rate_limited", "detail": "too many requests from this client"}),
                Some(wait),
            ),
            Self::QueueFull { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "queue_full", "detail": "the queue is above its high-water mark; retry later"}),
                Some(retry_after),
            ),
            Self::Unavailable {
                dependency,
                retry_after,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "detail": format!("{dependency} is unavailable"), "dependency": dependency}),
                Some(retry_after),
            ),
            Self::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "timeout", "detail": "the request took too long"}),
                None,
            ),
            // Never leak internals on a 5xx: the log has the cause.
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal", "detail": "internal error; see the service log"}),
                None,
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
