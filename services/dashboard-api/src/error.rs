//! The dashboard's errors, and how the HTTP API shows them.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Everything that can fail inside the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; `setting` names it as the user wrote it.
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
    #[error("Redis pool: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    #[error("Redis pool setup: {0}")]
    RedisPoolSetup(#[from] deadpool_redis::CreatePoolError),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("password hashing: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("no user `{0}`")]
    NoUser(String),
}

impl From<argon2::password_hash::Error> for Error {
    fn from(err: argon2::password_hash::Error) -> Self {
        Self::Hash(err)
    }
}

impl Error {
    /// A validation failure of one input field.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An HTTP error answer: a status and a JSON body `{"error": kind, "detail": text}`.
#[derive(Debug)]
pub enum ApiError {
    /// No session, or it ended.
    Unauthenticated,
    /// Wrong name or password (the same answer for both: no user enumeration).
    BadCredentials,
    /// The session's role may not use this route.
    Forbidden,
    /// A state-changing request without the session's CSRF token.
    Csrf,
    /// Too many attempts; retry after the duration.
    RateLimited(Duration),
    /// The session already has this many WebSockets open.
    TooManySockets(usize),
    /// An input field is wrong.
    Invalid { field: String, reason: String },
    /// The thing named does not exist.
    NotFound(String),
    /// It exists already.
    Conflict(String),
    /// A dependency did not answer.
    Unavailable(&'static str),
    /// Anything else; the cause is logged, never shown.
    Internal,
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid { field, reason } => Self::Invalid { field, reason },
            Error::UserExists(name) => Self::Conflict(format!("user `{name}` already exists")),
            Error::NoUser(name) => Self::NotFound(format!("no user `{name}`")),
            Error::Redis(_) | Error::RedisPool(_) => {
                tracing::warn!(error = %err, "Redis unavailable");
                Self::Unavailable("redis")
            }
            Error::Mongo(_) => {
                tracing::warn!(error = %err, "MongoDB unavailable");
                Self::Unavailable("mongodb")
            }
            Error::Kafka(_) => {
                tracing::warn!(error = %err, "Kafka unavailable");
                Self::Unavailable("kafka")
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, retry_after) = match self {
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthenticated", "detail": "log in first"}),
                None,
            ),
            Self::BadCredentials => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "bad_credentials", "detail": "wrong user name or password"}),
                None,
            ),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "detail": "your role may not do this"}),
                None,
            ),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                json!({"error": "csrf", "detail": "missing or wrong X-CSRF-Token header"}),
                None,
            ),
            Self::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "rate_limited", "detail": "too many attempts; wait and retry"}),
                Some(wait),
            ),
            Self::TooManySockets(limit) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "error": "too_many_sockets",
                    "limit": limit,
                    "detail": format!("this session already has {limit} live-update sockets open (SLUICE_DASHBOARD_WS_PER_SESSION); close one first"),
                }),
                None,
            ),
            Self::Invalid { field, reason } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "validation_error", "field": field, "detail": format!("{field}: {reason}")}),
                None,
            ),
            Self::NotFound(detail) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "detail": detail}),
                None,
            ),
            Self::Conflict(detail) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "detail": detail}),
                None,
            ),
            Self::Unavailable(dependency) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "dependency": dependency, "detail": format!("{dependency} is unavailable")}),
                Some(Duration::from_secs(1)),
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
