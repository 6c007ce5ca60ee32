//! sluice-analytics: the streaming analytics of seed 004 without its bugs. It consumes the
//! retail topics (sales, inventory updates, clients) in a Kafka consumer group and keeps, in
//! MongoDB, the top products by profit over every line item, the products at risk of loss
//! (with every reason), revenue and promotion eligibility per client, and a per-category,
//! per-minute rollup of sales and profit — exactly once in effect, through crashes and
//! rebalances, with malformed messages dead-lettered and never stopping the stream.
//!
//! # Layout
//! - [`config`]: settings from the environment, errors naming the setting.
//! - `model`: the input messages, parsed strictly (money as integer cents).
//! - `state`: one partition's contribution, each key with the offset it reflects.
//! - `results`: the rules, as a pure function from the merged state to documents.
//! - `store`: MongoDB: state, offsets and results, and the write order that makes replays
//!   exact without transactions.
//! - `kafka`: the consumer group (manual offsets), rebalance events, dead letters.
//! - `pipeline`: consume → apply → flush → commit; `retry`: backoff until success or stop.
//! - `metrics`: Prometheus metrics (messages, dead letters, flush latency and age, lag).
//!
//! [`App::build`] binds the HTTP port and creates the clients; [`App::run`] consumes and
//! serves `/health`, `/ready`, `/metrics` until the token is cancelled, then flushes and
//! commits what it processed.
//!
//! # Example
//! ```no_run
//! # async fn run() -> sluice_analytics::Result<()> {
//! use sluice_analytics::{App, Config};
//! let config = Config { port: 0, group_id: "analytics-demo".into(), ..Config::default() };
//! let app = App::build(config).await?;
//! println!("metrics at http://{}/metrics", app.local_addr());
//! app.run(sluice_core::shutdown::on_signal()).await
//! # }
//! ```

pub mod config;
mod error;
mod kafka;
mod metrics;
mod model;
mod packed;
mod pipeline;
mod results;
mod retry;
mod state;
mod store;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer as _;
use sluice_core::{health::Health, http::HttpServer, telemetry::Metrics};
use tokio_util::sync::CancellationToken;

pub use crate::{
    config::{Config, Topics},
    error::{Error, Result},
};
use crate::{
    kafka::GroupConsumer,
    metrics::AnalyticsMetrics,
    model::Kind,
    pipeline::{Pipeline, Positions},
    results::Rules,
    store::Store,
};

/// "Now" for the expiry and movement rules: the system clock, or a time a test sets.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<RwLock<Option<DateTime<Utc>>>>);

impl Clock {
    /// Fixed at `now` when given, else the system clock.
    pub fn new(now: Option<DateTime<Utc>>) -> Self {
        Self(Arc::new(RwLock::new(now)))
    }

    /// Fixes "now" from here on.
    pub fn set(&self, now: DateTime<Utc>) {
        if let Ok(mut t) = self.0.write() {
            *t = Some(now);
        }
    }

    /// The current "now".
    pub fn now(&self) -> DateTime<Utc> {
        self.0.read().ok().and_then(|t| *t).unwrap_or_else(Utc::now)
    }
}

/// A built service: clients created, port bound.
pub struct App {
    config: Config,
    server: HttpServer,
    consumer: Arc<GroupConsumer>,
    store: Store,
    health: Health,
    metrics: Metrics,
    analytics: AnalyticsMetrics,
    clock: Clock,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.local_addr())
            .field("group", &self.config.group_id)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Validates the config, creates the Kafka and MongoDB clients and binds the port.
    pub async fn build(config: Config) -> Result<Self> {
        config.validate()?;
        let metrics = Metrics::new("analytics")?;
        let analytics = AnalyticsMetrics::new(&metrics)?;
        let store = Store::connect(config.mongodb_url.expose(), &config.database).await?;
        let consumer = Arc::new(kafka::consumer(&config, analytics.rebalances.clone())?);
        let health = {
            let (db, kafka) = (store.clone(), consumer.clone());
            Health::new()
                .with_probe("mongodb", move || {
                    let db = db.clone();
                    async move { db.ping().await.map_err(|e| e.to_string()) }
                })
                .with_probe("kafka", move || {
                    let kafka = kafka.clone();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            kafka
                                .fetch_metadata(None, Duration::from_secs(2))
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| e.to_string())?
                    }
                })
        };
        let server = HttpServer::bind(&format!("{}:{}", config.host, config.port)).await?;
        let clock = Clock::new(config.fixed_now()?);
        Ok(Self {
            config,
            server,
            consumer,
            store,
            health,
            metrics,
            analytics,
            clock,
        })
    }

    /// Where `/health`, `/ready` and `/metrics` are served.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The clock of the expiry and movement rules.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The app's metric registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Consumes and serves until `shutdown`; then flushes and commits what was processed (at
    /// most `shutdown_timeout_ms`) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            server,
            consumer,
            store,
            health,
            metrics,
            analytics,
            clock,
        } = self;
        let topics = config.topics();
        let kinds = HashMap::from([
            (topics.sales.clone(), Kind::Sales),
            (topics.inventory.clone(), Kind::Inventory),
            (topics.clients.clone(), Kind::Clients),
        ]);
        let rules = Rules {
            top_products: config.top_products,
            expiry_window_days: config.expiry_window_days,
            stale_movement_days: config.stale_movement_days,
            promo_min_revenue_cents: config.promo_min_revenue_cents,
            promo_tiers: config.promo_tier_list(),
            rollup_minutes: (config.rollup_retention_hours > 0)
                .then(|| i64::try_from(config.rollup_retention_hours * 60).unwrap_or(i64::MAX)),
        };
        let mongo = store.clone();
        let pipeline = Pipeline::new(
            consumer.clone(),
            kafka::dead_letter_producer(&config)?,
            topics.dead_letters.clone(),
            kinds,
            store,
            analytics.clone(),
            rules,
            clock,
            Config::ms(config.flush_interval_ms),
            config.flush_batch_size,
            config.flush_max_keys,
            config.compact_after_entries,
            Config::ms(config.shutdown_timeout_ms),
        );
        let lag = tokio::spawn(report_lag(
            consumer.clone(),
            pipeline.positions.clone(),
            analytics,
            shutdown.clone(),
        ));
        let consuming = tokio::spawn(pipeline.run(shutdown.clone()));
        let router = health.router().merge(metrics.router());
        health.set_ready(true);
        tracing::info!(group = %config.group_id, sales = %topics.sales, database = %config.database, "stream analytics started");
        let served = server.serve(router, shutdown.clone()).await;
        health.set_ready(false);
        shutdown.cancel();
        let wait = Config::ms(config.shutdown_timeout_ms) + Duration::from_secs(5);
        if tokio::time::timeout(wait, consuming).await.is_err() {
            tracing::warn!(?wait, "pipeline did not stop in time");
        }
        lag.abort();
        // Every Kafka client is gone before returning: librdkafka threads outliving the app
        // have crashed test processes at exit.
        let _ = lag.await;
        drop(health);
        drop(consumer);
        mongo.shutdown().await;
        tracing::info!("stream analytics stopped");
        Ok(served?)
    }
}

/// Every 5 s: high watermark minus the next offset, for each owned partition.
async fn report_lag(
    consumer: Arc<GroupConsumer>,
    positions: Positions,
    metrics: AnalyticsMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = shutdown.cancelled() => return,
        }
        let owned: Vec<((String, i32), i64)> = positions
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let consumer = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            owned
                .into_iter()
                .filter_map(|((topic, partition), next)| {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(2))
                        .ok()?;
                    Some((topic, partition, (high - next).max(0)))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (topic, partition, lag) in lags {
            metrics
                .lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(lag);
        }
    }
}
