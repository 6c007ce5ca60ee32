//! Live updates: one watcher per source, one broadcast, a bounded queue per client.
//!
//! Each result collection has one watcher that runs one cheap query per interval (its count and
//! latest `updated_at`) however many clients are connected, and reloads the collection only
//! when that marker moves; the admin's system figures have one watcher too. A change becomes a
//! [`Frame`], serialised once, and goes to a `tokio::sync::broadcast` channel whose capacity is
//! each client's queue. Sending never waits for any client. A client that falls behind finds
//! `Lagged` on its receiver and skips to the latest state of each topic (counted in
//! `dashboard_ws_skipped_total`); a client whose socket does not take a message within the
//! send timeout is disconnected (`dashboard_ws_dropped_total`). Either way, the others never
//! wait for it: seed 002 awaited every client in one `gather()`.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

mod slots;

pub(crate) use self::slots::SessionSlots;
use crate::{
    metrics::DashboardMetrics,
    results::Collection,
    sessions::SessionStore,
    users::{Role, UserStore},
};

/// The topic of the admin's system figures.
pub const SYSTEM: &str = "system";

/// One serialised update: `{"type":"snapshot","topic":…,"data":…}`.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Which topic it replaces.
    pub topic: &'static str,
    /// The JSON text, shared by every client (cloning is a reference count).
    pub text: Utf8Bytes,
}

/// The broadcast and the latest frame of each topic (sent first to a client that connects).
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Frame>,
    latest: RwLock<HashMap<&'static str, Frame>>,
}

impl Hub {
    /// A hub whose clients may each have `queue` frames waiting.
    pub fn new(queue: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        Self {
            tx,
            latest: RwLock::new(HashMap::new()),
        }
    }

    /// Makes `data` the state of `topic` and sends it to every subscriber, without waiting.
    pub fn publish(&self, topic: &'static str, data: &Value) {
        let text = json!({"type": "snapshot", "topic": topic, "data": data}).to_string();
        self.publish_text(topic, Utf8Bytes::from(text));
    }

    /// Like [`publish`](Self::publish) with the frame already serialised (the benchmark
    /// publishes this way so that it measures the broadcast, not JSON encoding).
    pub fn publish_text(&self, topic: &'static str, text: Utf8Bytes) {
        let frame = Frame { topic, text };
        if let Ok(mut latest) = self.latest.write() {
            latest.insert(topic, frame.clone());
        }
        // An error only means nobody is connected.
        let _ = self.tx.send(frame);
    }

    /// The latest frame of `topic`.
    pub fn latest(&self, topic: &str) -> Option<Frame> {
        self.latest.read().ok()?.get(topic).cloned()
    }

    /// A receiver of every frame from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }
}

/// What one client needs.
#[derive(Debug, Clone)]
pub(crate) struct ClientCtx {
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: DashboardMetrics,
    pub(crate) shutdown: CancellationToken,
    pub(crate) send_timeout: Duration,
    pub(crate) tracker: TaskTracker,
    pub(crate) access: Access,
}

/// What a socket re-checks periodically: its session still exists and its user still has the
/// role the topics need, so a logout, an expiry or a demotion also ends live updates.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub(crate) sessions: SessionStore,
    pub(crate) users: UserStore,
    pub(crate) session_id: String,
    pub(crate) user: String,
    pub(crate) needs: Role,
    pub(crate) every: Duration,
}

impl Access {
    async fn holds(&self) -> bool {
        let live = self.sessions.is_live(&self.session_id).await;
        let role = self.users.role(&self.user).await;
        // A database that does not answer is not a reason to cut everyone off.
        match (live, role) {
            (Ok(false), _) | (_, Ok(None)) => false,
            (_, Ok(Some(role))) => role >= self.needs,
            _ => true,
        }
    }
}

/// Serves one WebSocket until it closes, the client is too slow, or the service stops (then
/// with close code 1001, going away).
pub(crate) async fn serve_client(
    mut socket: WebSocket,
    ctx: ClientCtx,
    topics: BTreeSet<&'static str>,
) {
    let _guard = ctx.tracker.token();
    ctx.metrics.ws_clients.inc();
    // Subscribe before sending the current state, so nothing published in between is missed.
    let mut rx = ctx.hub.subscribe();
    let initial: Vec<Frame> = topics.iter().filter_map(|t| ctx.hub.latest(t)).collect();
    let mut outcome = send_all(&mut socket, &ctx, initial).await;
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.access.every,
        ctx.access.every,
    );
    // Whether the client sent anything (a pong at least) since the last ping.
    let (mut heard, mut pinged) = (false, false);
    while outcome.is_ok() {
        tokio::select! {
            _ = recheck.tick() => {
                if pinged && !heard {
                    // Gone without closing (a laptop asleep, a network lost): free its slot.
                    outcome = Err(());
                    break;
                }
                if !ctx.access.holds().await {
                    let close = CloseFrame { code: close_code::POLICY, reason: "session ended".into() };
                    let _ = tokio::time::timeout(ctx.send_timeout, socket.send(Message::Close(Some(close)))).await;
                    break;
                }
                (heard, pinged) = (false, true);
                let ping = socket.send(Message::Ping(Default::default()));
                outcome = match tokio::time::timeout(ctx.send_timeout, ping).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(()),
                };
            }
            () = ctx.shutdown.cancelled() => {
                let close = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
                let _ = tokio::time::timeout(ctx.send_timeout, socket.send(Message::Close(Some(close)))).await;
                break;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => heard = true,
            },
            received = rx.recv() => {
                let frames = match received {
                    Ok(frame) => coalesce(&mut rx, &ctx, &topics, vec![frame]),
                    Err(RecvError::Lagged(n)) => {
                        ctx.metrics.ws_skipped.inc_by(n);
                        coalesce(&mut rx, &ctx, &topics, Vec::new())
                    }
                    Err(RecvError::Closed) => break,
                };
                outcome = send_all(&mut socket, &ctx, frames).await;
            }
        }
    }
    if outcome.is_err() {
        ctx.metrics.ws_dropped.inc();
        tracing::info!("disconnected a WebSocket client that did not keep up or stopped answering");
    }
    ctx.metrics.ws_clients.dec();
}

/// Everything waiting, reduced to the newest frame per subscribed topic; after a lag, the
/// hub's latest state of every topic.
fn coalesce(
    rx: &mut broadcast::Receiver<Frame>,
    ctx: &ClientCtx,
    topics: &BTreeSet<&'static str>,
    mut frames: Vec<Frame>,
) -> Vec<Frame> {
    let mut lagged = frames.is_empty();
    loop {
        match rx.try_recv() {
            Ok(frame) => frames.push(frame),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                ctx.metrics.ws_skipped.inc_by(n);
                lagged = true;
            }
            Err(_) => break,
        }
    }
    if lagged {
        return topics.iter().filter_map(|t| ctx.hub.latest(t)).collect();
    }
    let mut newest: HashMap<&'static str, Frame> = HashMap::new();
    let total = frames.len();
    for frame in frames.into_iter().filter(|f| topics.contains(f.topic)) {
        newest.insert(frame.topic, frame);
    }
    let superseded = total.saturating_sub(newest.len());
    if superseded > 0 {
        ctx.metrics.ws_skipped.inc_by(superseded as u64);
    }
    newest.into_values().collect()
}

/// Sends frames; `Err` when the client is gone or took longer than the send timeout.
async fn send_all(socket: &mut WebSocket, ctx: &ClientCtx, frames: Vec<Frame>) -> Result<(), ()> {
    for frame in frames {
        match tokio::time::timeout(ctx.send_timeout, socket.send(Message::Text(frame.text))).await {
            Ok(Ok(())) => ctx.metrics.ws_sent.inc(),
            _ => return Err(()),
        }
    }
    Ok(())
}

/// Sleeps `interval` or returns false when the service stops.
pub(crate) async fn tick(shutdown: &CancellationToken, interval: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(interval) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Logs a watcher's failure at most once a minute, so an outage does not flood the log.
#[derive(Debug, Default)]
pub(crate) struct Throttle(Option<Instant>);

impl Throttle {
    pub(crate) fn warn(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if self.0.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            self.0 = Some(Instant::now());
            tracing::warn!(error = %err, "{what} failed; retrying");
        }
    }
}

/// The body for a collection: its rows, or a placeholder saying why there are none.
pub fn collection_body(c: Collection, rows: Vec<Value>) -> Value {
    let message = rows.is_empty().then_some(match c {
        Collection::Winners => {
            "No product winners yet: they appear once sales of known products are processed."
        }
        Collection::LossRisk => "No product is at risk of loss right now.",
        Collection::Clients => {
            "No clients yet: they appear once sales or client records are processed."
        }
        Collection::SalesByCategory => "No sales in the last hour.",
    });
    json!({"collection": c.api_name(), "empty": rows.is_empty(), "message": message, "rows": rows})
}
