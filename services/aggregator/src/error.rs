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

/// What a failed write means for the entries it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// Postgres refused the data itself (SQLSTATE classes 22 data exception and 23 integrity
    /// violation): retrying the same entries cannot help.
    Refused,
    /// Postgres is up but failed this statement for a reason that may or may not be the data
    /// (a statement timeout on a huge round, a program limit, a trigger's exception): worth a
    /// few retries, then the round is split and what still fails is dead-lettered.
    Statement,
    /// Postgres is unreachable, restarting, overloaded or resolving a conflict: the entries are
    /// fine and wait in Redis until it is back, however long that takes.
    Outage,
}

impl Error {
    /// Classifies a failed write; see [`WriteFailure`].
    pub fn write_failure(&self) -> WriteFailure {
        match self {
            Self::Database(sqlx::Error::Database(db)) => match db.code().as_deref() {
                Some(code) if code.starts_with("22") || code.starts_with("23") => {
                    WriteFailure::Refused
                }
                // Connection exceptions, serialization failure and deadlock, resources other
                // than memory, operator intervention (shutdown, cannot connect now), a read-only
                // standby after a fail-over, lock not available.
                Some(code)
                    if code.starts_with("08")
                        || matches!(code, "40001" | "40P01" | "53100" | "53300" | "53400")
                        || code.starts_with("57P")
                        || matches!(code, "25006" | "55P03" | "55006") =>
                {
                    WriteFailure::Outage
                }
                _ => WriteFailure::Statement,
            },
            Self::Poison { .. } | Self::Config { .. } => WriteFailure::Refused,
            _ => WriteFailure::Outage,
        }
    }

    /// The error as a dead-letter reason: its message, plus the SQLSTATE when Postgres gave one
    /// (sqlx's message alone does not name it).
    pub fn reason(&self) -> String {
        match self {
            Self::Database(sqlx::Error::Database(db)) => match db.code() {
                Some(code) => format!("{self} (SQLSTATE {code})"),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }

    /// Whether retrying cannot help: the data itself is refused.
    pub fn is_permanent(&self) -> bool {
        self.write_failure() == WriteFailure::Refused
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
    /// Too many `/publish` requests in flight.
    Overloaded {
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
            Self::Overloaded { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "overloaded", "detail": "too many requests in flight; retry later"}),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refused_data_is_permanent_and_unknown_failures_are_outages() {
        let poison = Error::Poison {
            entry_id: "1-0".into(),
            reason: "x".into(),
        };
        assert_eq!(poison.write_failure(), WriteFailure::Refused);
        assert!(poison.is_permanent());
        // Connection-level failures never dead-letter anything: the entries wait.
        for outage in [
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            Error::RedisTimeout(Duration::from_secs(1)),
        ] {
            assert_eq!(outage.write_failure(), WriteFailure::Outage, "{outage}");
        }
    }
}
