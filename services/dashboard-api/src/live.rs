//! Live updates: one watcher per source, one fan-out, a bounded queue per client.
//!
//! Each result collection has one watcher that runs one cheap query per interval (its count and
//! latest `updated_at`) however many clients are connected, and reloads the collection only
//! when that marker moves; the admin's system figures have one watcher too. A change becomes a
//! [`Frame`], serialised once, and goes through a `tokio::sync::broadcast` channel (capacity
//! `CLIENT_QUEUE`) to a few fan-out shards, one per CPU, which write it to each of their
//! sockets directly without waiting for any (see `fanout`). A socket that does not take a frame
//! at once keeps at most one pending frame per topic, its latest state; frames it skips that
//! way are counted in `dashboard_ws_skipped_total`. Its own task flushes it, and a socket that
//! takes nothing within the send timeout is disconnected (`dashboard_ws_dropped_total`).
//! Either way, the others never wait for it: seed 002 awaited every client in one `gather()`.
//!
//! - `fanout`: the shards and a socket's state as they see it.
//! - `client`: a socket's own task (current state, takeover when blocked, pings, close).
//! - `slots`: the per-session cap on open sockets.

mod client;
mod fanout;
mod slots;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use self::fanout::{Joins, Subscriber};
pub(crate) use self::{
    client::{Access, ClientCtx, serve_client},
    slots::SessionSlots,
};
use crate::{metrics::DashboardMetrics, results::Collection};

/// The topic of the admin's system figures.
pub const SYSTEM: &str = "system";

/// Every topic: the result collections and [`SYSTEM`].
const TOPIC_COUNT: usize = Collection::ALL.len() + 1;

/// A topic's place among the topics (a client's topics are a set of these).
fn topic_index(topic: &str) -> Option<usize> {
    if topic == SYSTEM {
        return Some(Collection::ALL.len());
    }
    Collection::ALL.iter().position(|c| c.api_name() == topic)
}

/// One serialised update: `{"type":"snapshot","topic":…,"data":…}`.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Which topic it replaces.
    pub topic: &'static str,
    /// The JSON text, shared by every client (cloning is a reference count).
    pub text: Utf8Bytes,
}

/// The broadcast to the fan-out shards and the latest frame of each topic (sent first to a
/// client that connects).
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Frame>,
    latest: RwLock<HashMap<&'static str, Frame>>,
    shards: Vec<Arc<Joins>>,
    next_shard: AtomicUsize,
}

impl Hub {
    /// A hub whose fan-out may fall `queue` frames behind before it skips to the latest state,
    /// with one fan-out shard per CPU.
    pub fn new(queue: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            tx,
            latest: RwLock::new(HashMap::new()),
            shards: (0..cpus.clamp(1, 16)).map(|_| Arc::default()).collect(),
            next_shard: AtomicUsize::new(0),
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
        // An error only means the fan-out is not running (yet).
        let _ = self.tx.send(frame);
    }

    /// The latest frame of `topic`.
    pub fn latest(&self, topic: &str) -> Option<Frame> {
        self.latest.read().ok()?.get(topic).cloned()
    }

    fn latest_of(&self, t: usize) -> Option<Frame> {
        let topic = Collection::ALL.get(t).map_or(SYSTEM, |c| c.api_name());
        self.latest(topic)
    }

    fn latest_all(&self) -> Vec<Frame> {
        (0..TOPIC_COUNT).filter_map(|t| self.latest_of(t)).collect()
    }

    /// Hands a new socket to the next shard.
    fn join(&self, sub: Arc<Subscriber>) {
        let i = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[i].push(sub);
    }

    /// The fan-out shards, to run until `shutdown` (the app spawns them).
    pub(crate) fn fan_out(
        self: &Arc<Self>,
        metrics: &DashboardMetrics,
        shutdown: &CancellationToken,
    ) -> Vec<impl Future<Output = ()> + Send + 'static> {
        self.shards
            .iter()
            .map(|joins| {
                fanout::run_shard(
                    self.clone(),
                    joins.clone(),
                    self.tx.subscribe(),
                    metrics.clone(),
                    shutdown.clone(),
                )
            })
            .collect()
    }
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
