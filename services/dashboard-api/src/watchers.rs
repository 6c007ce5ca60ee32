//! The watchers behind live updates: one task per result collection, one for system figures.
//! Each runs its query once per interval for all clients together.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    kafka::Publisher,
    live::{Hub, SYSTEM, Throttle, collection_body, tick},
    results::{Collection, ResultStore},
    system::SystemReader,
};

/// The chart's window slides: its collection is reloaded at least this often.
const CHART_REFRESH: Duration = Duration::from_secs(30);
/// Consumer lag needs several broker round trips: asked at most this often.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Document counts of the result collections, as the watchers last saw them.
pub(crate) type Counts = Arc<RwLock<HashMap<&'static str, i64>>>;

/// Publishes a collection whenever its marker moves (and at start).
pub(crate) async fn watch_collection(
    c: Collection,
    store: ResultStore,
    hub: Arc<Hub>,
    counts: Counts,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut seen = None;
    let mut loaded_at = Instant::now();
    let mut throttle = Throttle::default();
    loop {
        match store.marker(c).await {
            Ok(marker) => {
                if let Ok(mut counts) = counts.write() {
                    counts.insert(c.mongo_name(), marker.0);
                }
                let stale = c == Collection::SalesByCategory && loaded_at.elapsed() > CHART_REFRESH;
                if seen != Some(marker) || stale {
                    match store.rows(c).await {
                        Ok(rows) => {
                            hub.publish(c.api_name(), &collection_body(c, rows));
                            seen = Some(marker);
                            loaded_at = Instant::now();
                        }
                        Err(err) => throttle.warn(c.mongo_name(), &err),
                    }
                }
            }
            Err(err) => throttle.warn(c.mongo_name(), &err),
        }
        if !tick(&shutdown, interval).await {
            return;
        }
    }
}

/// What the system watcher reads.
#[derive(Debug, Clone)]
pub(crate) struct SystemSources {
    pub(crate) reader: SystemReader,
    pub(crate) publisher: Publisher,
    pub(crate) analytics_group: String,
    pub(crate) analytics_topics: Vec<String>,
    pub(crate) counts: Counts,
}

impl SystemSources {
    /// The admin's figures now; a source that fails shows its error instead of its figures.
    pub(crate) async fn read(&self, lag: Option<i64>) -> Value {
        let aggregator = self.reader.aggregator().await;
        let streams = self.reader.streams().await;
        let or_error =
            |r: crate::Result<Value>| r.unwrap_or_else(|e| json!({"error": e.to_string()}));
        let counts: HashMap<&str, i64> = self.counts.read().map(|c| c.clone()).unwrap_or_default();
        json!({
            "results": counts,
            "aggregator": or_error(aggregator),
            "streams": or_error(streams),
            "analytics": {"group": self.analytics_group, "lag": lag},
        })
    }
}

/// Publishes the system figures when they change.
pub(crate) async fn watch_system(
    sources: SystemSources,
    hub: Arc<Hub>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = Value::Null;
    let mut lag = None;
    let mut lag_at: Option<Instant> = None;
    loop {
        if lag_at.is_none_or(|t| t.elapsed() > LAG_EVERY) {
            lag = sources
                .publisher
                .lag(&sources.analytics_group, sources.analytics_topics.clone())
                .await;
            lag_at = Some(Instant::now());
        }
        let figures = sources.read(lag).await;
        if figures != last {
            hub.publish(SYSTEM, &figures);
            last = figures;
        }
        if !tick(&shutdown, interval.max(Duration::from_millis(500))).await {
            return;
        }
    }
}
