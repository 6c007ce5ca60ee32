//! The HTTP API of DESIGN §3, compatible with the seed's aggregator.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use sluice_core::{
    event::{BodyError, Limits, parse_body},
    health::Health,
    telemetry::{HttpMetrics, Metrics},
    wire::BatchMessage,
};
use sluice_resilience::limiter::KeyedLimiter;
use tokio::sync::Semaphore;

use crate::{
    config::Config, error::ApiError, metrics::AggregatorMetrics, queue::Stream, store::Store,
};

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub config: Config,
    pub stream: Stream,
    pub store: Arc<Store>,
    pub metrics: AggregatorMetrics,
    /// Stream length as last seen by the backlog monitor.
    pub backlog: Arc<AtomicU64>,
    pub limiter: Option<KeyedLimiter<IpAddr>>,
    /// One permit per `/publish` request in flight (load shedding).
    pub publish_slots: Arc<Semaphore>,
    pub started: Instant,
}

/// Every route, with request metrics and the request timeout.
pub fn router(
    state: Arc<ApiState>,
    health: &Health,
    metrics: &Metrics,
    http_metrics: HttpMetrics,
) -> Router {
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    Router::new()
        .route("/", get(root))
        .route("/publish", post(publish))
        .route("/events", get(events))
        .route("/stats", get(stats))
        .route("/openapi.json", get(crate::openapi::document))
        .with_state(state)
        .merge(health.router())
        .merge(metrics.router())
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::Timeout.into_response(),
                }
            },
        ))
        .layer(middleware::from_fn_with_state(
            http_metrics,
            HttpMetrics::track,
        ))
}

#[utoipa::path(get, path = "/", tag = "aggregator",
    responses(
        (status = 200, description = "The service, its version and endpoints", body = crate::openapi::RootDoc),
        (status = 408, description = "Took too long", body = crate::openapi::ErrorDoc),
    ))]
pub(crate) async fn root() -> Json<Value> {
    Json(json!({
        "service": "sluice-aggregator",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": ["POST /publish", "GET /events", "GET /stats", "GET /health", "GET /ready", "GET /metrics", "GET /openapi.json"],
    }))
}

/// Validates and queues events: all of them or none.
#[utoipa::path(post, path = "/publish", tag = "aggregator",
    request_body(content = crate::openapi::PublishBodyDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued; will be stored once per (topic, event_id)", body = crate::openapi::AcceptedDoc),
        (status = 400, description = "Malformed JSON", body = crate::openapi::ErrorDoc),
        (status = 408, description = "The request took too long", body = crate::openapi::ErrorDoc),
        (status = 413, description = "Body over MAX_BODY_BYTES", body = crate::openapi::ErrorDoc),
        (status = 415, description = "Content-Type is not JSON", body = crate::openapi::ErrorDoc),
        (status = 422, description = "An event is invalid (index and field named) or the batch is", body = crate::openapi::ErrorDoc),
        (status = 429, description = "Over this client's rate", body = crate::openapi::ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Queue full, overloaded or Redis unavailable", body = crate::openapi::ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn publish(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let reject = |reason: &str, err: ApiError| {
        state.metrics.rejected.with_label_values(&[reason]).inc();
        err
    };
    if let Some(limiter) = &state.limiter
        && let Err(refused) = limiter.check(&peer.ip())
    {
        let wait = refused.retry_after().unwrap_or(Duration::from_secs(1));
        return Err(reject("rate_limited", ApiError::RateLimited(wait)));
    }
    // Overload is refused before the body is read: shedding must cost less than the work.
    let Ok(_slot) = state.publish_slots.clone().try_acquire_owned() else {
        return Err(reject(
            "overloaded",
            ApiError::Overloaded {
                retry_after: jittered_retry(),
            },
        ));
    };
    if state.backlog.load(Ordering::Relaxed) >= state.config.high_water_mark {
        return Err(reject(
            "queue_full",
            ApiError::QueueFull {
                retry_after: jittered_retry(),
            },
        ));
    }
    if !is_json(&headers) {
        return Err(reject("media_type", ApiError::UnsupportedMediaType));
    }
    let limit = state.config.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| reject("too_large", ApiError::TooLarge(limit)))?;
    // Parsed once into raw JSON: the payloads are checked in place and queued as sent.
    let limits = Limits {
        max_events: state.config.max_batch_events,
        max_payload_bytes: state.config.max_payload_bytes,
    };
    let events = parse_body(&bytes, &limits).map_err(|e| match e {
        BodyError::Malformed(e) => reject("malformed_json", ApiError::BadJson(e.to_string())),
        BodyError::Invalid(e) => reject("validation", ApiError::Invalid(e)),
    })?;
    let count = events.len();
    let trace_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let message = BatchMessage::new(events, Some(trace_id.clone()));
    let encoded = message.to_bytes().map_err(|err| {
        tracing::error!(error = %err, "encoding a validated batch failed");
        ApiError::Internal
    })?;
    let timeout = Duration::from_millis(state.config.publish_timeout_ms);
    match tokio::time::timeout(timeout, state.stream.append(&encoded)).await {
        Ok(Ok((entry_id, recreated))) => {
            if recreated {
                state.metrics.group_recreated.inc();
                tracing::error!(
                    stream = state.stream.key(),
                    "the stream and its consumer group were missing (Redis lost its data?); created them again"
                );
            }
            state.metrics.accepted.inc_by(count as u64);
            state.backlog.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%trace_id, %entry_id, events = count, "batch queued");
            let body = json!({"status": "accepted", "queued": count, "accepted": count});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Ok(Err(err)) => {
            tracing::warn!(%trace_id, error = %err, "queueing failed");
            Err(reject(
                "redis",
                ApiError::Unavailable {
                    dependency: "redis",
                    retry_after: Duration::from_secs(1),
                },
            ))
        }
        Err(_) => {
            tracing::warn!(%trace_id, ?timeout, "queueing timed out");
            Err(reject(
                "redis",
                ApiError::Unavailable {
                    dependency: "redis",
                    retry_after: Duration::from_secs(1),
                },
            ))
        }
    }
}

/// 1 to 3 s, so clients told to come back do not all come back in the same second.
fn jittered_retry() -> Duration {
    Duration::from_millis(1_000 + fastrand::u64(0..=2_000))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The latest stored events, newest first.
#[utoipa::path(get, path = "/events", tag = "aggregator",
    params(
        ("topic" = Option<String>, Query, description = "Only this topic; empty means all"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Stored events, newest processed_at first", body = Vec<crate::openapi::StoredEventDoc>),
        (status = 408, description = "Took too long", body = crate::openapi::ErrorDoc),
        (status = 422, description = "limit out of range", body = crate::openapi::ErrorDoc),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn events(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadQuery {
                    field: "limit",
                    message: format!("must be an integer from 1 to 1000, got {raw:?}"),
                });
            }
        },
    };
    let topic = query
        .get("topic")
        .map(String::as_str)
        .filter(|t| !t.is_empty());
    let rows = state
        .store
        .recent(topic, limit)
        .await
        .map_err(|err| unavailable_db(&err))?;
    Ok(Json(rows).into_response())
}

/// Counters, topics and the queue.
#[utoipa::path(get, path = "/stats", tag = "aggregator",
    responses(
        (status = 200, description = "Counters", body = crate::openapi::StatsDoc),
        (status = 408, description = "Took too long", body = crate::openapi::ErrorDoc),
        (status = 503, description = "Postgres unavailable", body = crate::openapi::ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn stats(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let (counters, topics) = tokio::try_join!(state.store.counters(), state.store.topics())
        .map_err(|err| unavailable_db(&err))?;
    let backlog = state.stream.backlog().await.ok();
    Ok(Json(json!({
        "received": counters.received,
        "unique_processed": counters.unique_processed,
        "duplicate_dropped": counters.duplicate_dropped,
        // A number, as in the seed's service (clients do arithmetic on it); the names beside it.
        "topics": topics.len(),
        "topic_names": topics,
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "status": "healthy",
        "queue": backlog.map(|b| json!({"length": b.length, "pending": b.pending})),
        "accepted_since_start": state.metrics.accepted.get(),
    }))
    .into_response())
}

fn unavailable_db(err: &crate::Error) -> ApiError {
    tracing::warn!(error = %err, "database query failed");
    ApiError::Unavailable {
        dependency: "database",
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(ct).expect("header"),
            );
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/vnd.api+json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
