//! The JSON API and its router. Each handler takes a [`Caller`] (session + CSRF checked on
//! extraction) and states the least role it needs; the route × role matrix is tested.
//!
//! | route | least role |
//! |---|---|
//! | `POST /api/login` | none |
//! | `GET /api/me`, `POST /api/logout` | viewer |
//! | `GET /api/results/{winners,loss_risk,clients,sales_by_category}` | viewer |
//! | `GET /api/ws?topics=…` | viewer; topic `system` admin; at most `WS_PER_SESSION` open |
//! | `POST /api/sales`, `POST /api/inventory` | accountant |
//! | `GET /api/system`, `GET/POST /api/users`, `DELETE /api/users/{name}` | admin |

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State, WebSocketUpgrade, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    AppState,
    auth::{self, Caller},
    error::ApiError,
    input::{InventoryInput, SaleInput},
    live::{self, ClientCtx, SYSTEM},
    results::Collection,
    users::Role,
    web,
};

/// The API and the page (health and metrics are merged in by the app).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/results/{name}", get(results))
        .route("/api/system", get(system))
        .route("/api/sales", post(sales))
        .route("/api/inventory", post(inventory))
        .route("/api/users", get(list_users).post(add_user))
        .route("/api/users/{name}", delete(remove_user))
        .route("/api/ws", get(websocket))
        .merge(web::router())
        .with_state(state)
}

/// A JSON body, with a shape error shown as a 422 naming the problem.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|e| ApiError::Invalid {
        field: "body".into(),
        reason: e.body_text(),
    })
}

async fn results(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.at_least(Role::Viewer)?;
    let c = Collection::from_api_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no result collection `{name}`")))?;
    let rows = state.results.rows(c).await?;
    Ok(Json(live::collection_body(c, rows)))
}

async fn system(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.at_least(Role::Admin)?;
    // The watcher's latest figures (lag included) when it has run; read now otherwise.
    if let Some(frame) = state.hub.latest(SYSTEM) {
        let v: Value = serde_json::from_str(frame.text.as_str()).map_err(|_| ApiError::Internal)?;
        return Ok(Json(v["data"].clone()));
    }
    Ok(Json(state.system.read(None).await))
}

/// The request's `x-request-id` when it sent a usable one, else a new id: it goes with the
/// published message in its trace header.
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

async fn sales(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    parsed: Result<Json<SaleInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.at_least(Role::Accountant)?;
    let (key, message) = body(parsed)?.into_message()?;
    let trace_id = trace_id(&headers);
    let delivered = state
        .publisher
        .publish(&state.config.sales_topic(), &key, &message, &trace_id)
        .await?;
    state.metrics.published.inc();
    tracing::info!(user = %caller.session.user, invoice = %key, %trace_id, "sale published");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"status": "published", "key": key, "delivered": delivered, "message": message, "trace_id": trace_id}),
        ),
    )
        .into_response())
}

async fn inventory(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    parsed: Result<Json<InventoryInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.at_least(Role::Accountant)?;
    let (key, message) = body(parsed)?.into_message()?;
    let trace_id = trace_id(&headers);
    let delivered = state
        .publisher
        .publish(&state.config.inventory_topic(), &key, &message, &trace_id)
        .await?;
    state.metrics.published.inc();
    tracing::info!(user = %caller.session.user, product = %key, %trace_id, "inventory update published");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"status": "published", "key": key, "delivered": delivered, "message": message, "trace_id": trace_id}),
        ),
    )
        .into_response())
}

async fn list_users(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.at_least(Role::Admin)?;
    Ok(Json(json!({"users": state.users.list().await?})))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: String,
    password: String,
}

async fn add_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    parsed: Result<Json<NewUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.at_least(Role::Admin)?;
    let new = body(parsed)?;
    let role: Role = new.role.parse()?;
    state
        .users
        .add(new.name.trim(), role, &new.password)
        .await?;
    tracing::info!(by = %caller.session.user, user = %new.name, %role, "user added");
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": new.name.trim(), "role": role})),
    )
        .into_response())
}

async fn remove_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.at_least(Role::Admin)?;
    if name == caller.session.user {
        return Err(ApiError::Invalid {
            field: "name".into(),
            reason: "you cannot remove yourself".into(),
        });
    }
    state.users.remove(&name).await?;
    tracing::info!(by = %caller.session.user, user = %name, "user removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WsQuery {
    topics: Option<String>,
}

/// The topics a role may subscribe to.
pub(crate) fn allowed(role: Role, topic: &str) -> bool {
    match topic {
        SYSTEM => role >= Role::Admin,
        other => Collection::from_api_name(other).is_some() && role >= Role::Viewer,
    }
}

/// Whether an `Origin` header (sent by browsers on WebSocket handshakes) names this host, so
/// another site's page cannot open a socket with the user's cookie.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, h)| h == host)
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    caller.at_least(Role::Viewer)?;
    if !same_origin(&headers) {
        return Err(ApiError::Forbidden);
    }
    let requested: Vec<String> = match &query.topics {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Collection::ALL
            .iter()
            .map(|c| c.api_name().to_owned())
            .collect(),
    };
    let mut topics = BTreeSet::new();
    let mut needs = Role::Viewer;
    for t in &requested {
        if !allowed(caller.role, t) {
            return Err(ApiError::Forbidden);
        }
        if t == SYSTEM {
            needs = Role::Admin;
        }
        let name: &'static str = if t == SYSTEM {
            SYSTEM
        } else {
            Collection::from_api_name(t).map_or(SYSTEM, Collection::api_name)
        };
        topics.insert(name);
    }
    let Some(slot) = state.ws_slots.acquire(&caller.session.id) else {
        state.metrics.ws_refused.inc();
        return Err(ApiError::TooManySockets(state.ws_slots.limit()));
    };
    let ctx = ClientCtx {
        hub: state.hub.clone(),
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
        send_timeout: crate::Config::ms(state.config.send_timeout_ms),
        tracker: state.tracker.clone(),
        access: live::Access {
            sessions: state.sessions.clone(),
            users: state.users.clone(),
            session_id: caller.session.id.clone(),
            user: caller.session.user.clone(),
            needs,
            every: crate::Config::ms(state.config.ws_recheck_ms),
        },
    };
    // Clients only ever send pings and a close: small buffers and a small message limit (the
    // default allows 64 MiB) keep each socket's memory bounded.
    let upgrade = upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024);
    // The slot lives in the socket's task: however it ends (or if the upgrade fails and the
    // task never starts), dropping it frees the place.
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _slot = slot;
        live::serve_client(socket, ctx, topics).await;
    }))
}
