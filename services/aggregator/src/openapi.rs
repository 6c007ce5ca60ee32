//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.
//!
//! Generated at build time (utoipa) from the `#[utoipa::path]` annotations on the handlers in
//! [`crate::http`] and the schema types below. The handlers take untyped JSON so that a bad
//! event can be reported by index and field, so the request and response shapes are described
//! here by types that exist only for the document; `tests/it/api.rs` checks the document
//! against the live answers, and `scripts/schemathesis.sh` sends what it generates from it.

// The types below are never built: they only describe JSON for the document.
#![allow(dead_code)]

use axum::Json;
use serde::Deserialize;
use utoipa::{
    OpenApi, PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{ArrayBuilder, Ref, Schema},
    },
};

/// One event (DESIGN §3). Unknown fields are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = Event)]
pub(crate) struct EventDoc {
    /// 1 to 255 characters, without U+0000.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000]*$")]
    topic: String,
    /// Identity of the event within its topic: 1 to 255 characters, without U+0000.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000]*$")]
    event_id: String,
    /// Who sent it: 1 to 255 characters, without U+0000.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000]*$")]
    source: String,
    /// ISO 8601 date-time, years 0001 to 9999; without an offset it is UTC.
    #[schema(format = DateTime)]
    timestamp: String,
    /// Any JSON object (default `{}`): no U+0000 in its strings or keys, at most 100 levels
    /// deep, at most `MAX_PAYLOAD_BYTES` of JSON.
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
}

/// `{"events": [...]}`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct EventListDoc {
    /// 1 to `MAX_BATCH_EVENTS` events; all are accepted or none.
    #[schema(min_items = 1)]
    events: Vec<EventDoc>,
}

/// A bare list of 1 to `MAX_BATCH_EVENTS` events. Written by hand: the derive cannot put
/// `minItems` on a list that is not a named field.
#[derive(Deserialize)]
pub(crate) struct EventArrayDoc(Vec<EventDoc>);

impl PartialSchema for EventArrayDoc {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name("Event"))
            .min_items(Some(1))
            .into()
    }
}

impl ToSchema for EventArrayDoc {}

/// A publish body: a list of events under `events`, a bare list, or a single event.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishBodyDoc {
    Wrapped(EventListDoc),
    List(EventArrayDoc),
    Single(EventDoc),
}

/// `202`: the events are in the queue and will be stored.
#[derive(Deserialize, ToSchema)]
pub(crate) struct AcceptedDoc {
    /// Always `accepted`.
    status: String,
    queued: u64,
    accepted: u64,
}

/// Every error answer.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ErrorDoc {
    /// A stable kind: `malformed_json`, `validation_error`, `rate_limited`, `queue_full`, …
    error: String,
    /// What is wrong, for a person.
    detail: String,
    /// `422` only: position of the bad event, `null` when the batch itself is at fault.
    index: Option<u64>,
    /// `422` only: the field at fault.
    field: Option<String>,
    /// `503 unavailable` only: the dependency that is down.
    dependency: Option<String>,
}

/// An event as stored.
#[derive(Deserialize, ToSchema)]
pub(crate) struct StoredEventDoc {
    topic: String,
    event_id: String,
    #[schema(format = DateTime)]
    timestamp: String,
    source: String,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    #[schema(format = DateTime)]
    processed_at: String,
}

/// The stream right now.
#[derive(Deserialize, ToSchema)]
pub(crate) struct QueueDoc {
    length: u64,
    pending: u64,
}

/// Counters; `received == unique_processed + duplicate_dropped` at all times.
#[derive(Deserialize, ToSchema)]
pub(crate) struct StatsDoc {
    received: i64,
    unique_processed: i64,
    duplicate_dropped: i64,
    /// The number of topics seen.
    topics: u64,
    topic_names: Vec<String>,
    uptime_seconds: f64,
    status: String,
    /// `null` when Redis could not be read.
    queue: Option<QueueDoc>,
    accepted_since_start: u64,
}

/// `/health` and `/ready`: `healthy` with every dependency `connected`, or `503` naming the
/// failing part.
#[derive(Deserialize, ToSchema)]
pub(crate) struct HealthDoc {
    status: String,
    database: Option<String>,
    redis: Option<String>,
    #[schema(format = DateTime)]
    timestamp: Option<String>,
}

/// The service, its version and its endpoints.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RootDoc {
    service: String,
    version: String,
    endpoints: Vec<String>,
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = HealthDoc),
        (status = 408, description = "Took too long", body = ErrorDoc),
        (status = 503, description = "A dependency is down (named)", body = HealthDoc),
    ))]
fn health() {}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = HealthDoc),
        (status = 408, description = "Took too long", body = ErrorDoc),
        (status = 503, description = "Not ready, or a dependency is down", body = HealthDoc),
    ))]
fn ready() {}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 408, description = "Took too long", body = ErrorDoc),
    ))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "This document", body = Object),
        (status = 408, description = "Took too long", body = ErrorDoc),
    ))]
fn openapi_json() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluice-aggregator",
        description = "Events in over HTTP, stored once per (topic, event_id) in Postgres"
    ),
    paths(
        crate::http::publish,
        crate::http::events,
        crate::http::stats,
        crate::http::root,
        health,
        ready,
        metrics,
        openapi_json
    ),
    components(schemas(
        EventDoc,
        EventListDoc,
        EventArrayDoc,
        PublishBodyDoc,
        AcceptedDoc,
        ErrorDoc,
        StoredEventDoc,
        StatsDoc,
        QueueDoc,
        HealthDoc,
        RootDoc
    ))
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
