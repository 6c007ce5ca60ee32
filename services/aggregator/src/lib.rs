//! sluice-aggregator: takes events in over HTTP (and optionally RabbitMQ), queues them in a
//! Redis stream, and stores each (topic, event_id) exactly once in Postgres, with counters that
//! never count an event twice — through crashes, redeliveries and replicas.
//!
//! # Layout
//! - [`config`]: settings from the environment (the seed's names keep working).
//! - [`http`]: `POST /publish`, `GET /events`, `GET /stats`, `GET /`, plus `/health`, `/ready`,
//!   `/metrics` from sluice-core.
//! - [`queue`]: the Redis stream and its consumer group.
//! - [`worker`]: stream → Postgres, acknowledging only after the commit.
//! - [`store`]: the Postgres side: dedup, counters, recognising redelivered entries.
//! - [`amqp`]: the optional RabbitMQ ingress.
//! - `openapi`: the OpenAPI 3.1 document served at `/openapi.json`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`App::build`] connects and migrates; [`App::run`] serves until the shutdown token is
//! cancelled, then lets the workers finish their batch.

pub mod amqp;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
mod openapi;
pub mod queue;
pub mod store;
pub mod worker;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_core::{
    health::Health,
    http::HttpServer,
    telemetry::{HttpMetrics, Metrics},
};
use sluice_resilience::limiter::KeyedLimiter;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::AmqpIngress,
    http::ApiState,
    metrics::AggregatorMetrics,
    queue::{Consumer, Stream},
    store::Store,
    worker::Worker,
};
pub use crate::{
    config::Config,
    error::{Error, Result},
};

/// How often the stream's length is read for `/publish`'s high-water check and the gauges.
const BACKLOG_EVERY: Duration = Duration::from_millis(200);
/// How often the rate limiter forgets clients back at a full allowance.
const RETAIN_EVERY: Duration = Duration::from_secs(10);
/// How often records of consumed entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A built aggregator: connected, migrated, listening.
#[derive(Debug)]
pub struct App {
    config: Config,
    server: HttpServer,
    state: Arc<ApiState>,
    health: Health,
    metrics: Metrics,
    http_metrics: HttpMetrics,
}

impl App {
    /// Binds the port, connects to Redis and Postgres and applies the migrations.
    ///
    /// Postgres may be down at start: the service then starts anyway, accepts into Redis, and
    /// its workers store the backlog when Postgres comes back (migrations are applied first).
    pub async fn build(config: Config) -> Result<Self> {
        let metrics = Metrics::new("aggregator")?;
        let aggregator_metrics = AggregatorMetrics::new(&metrics)?;
        let http_metrics = HttpMetrics::new(&metrics)?;
        let store = Arc::new(Store::connect_lazy(
            config.database_url.expose(),
            config.database_pool_size,
            config.database_read_pool_size,
        )?);
        let publish_conn = queue::connect(
            config.redis_url.expose(),
            Config::ms(config.publish_timeout_ms),
        )
        .await?;
        let stream = Stream::new(publish_conn, &config.stream_key, &config.consumer_group);
        stream.ensure_group().await?;
        if let Err(err) = store.migrate().await {
            tracing::warn!(error = %err, "migrations not applied yet (Postgres unreachable?); workers retry");
        }
        let limiter = if config.rate_limit_per_client > 0.0 {
            Some(
                KeyedLimiter::new(config.rate_limit_per_client, config.rate_limit_burst).map_err(
                    |e| Error::Config {
                        setting: "SLUICE_AGGREGATOR_RATE_LIMIT_PER_CLIENT",
                        reason: e.to_string(),
                    },
                )?,
            )
        } else {
            None
        };
        let health = {
            let (db, redis) = (store.clone(), stream.clone());
            Health::new()
                .with_probe("database", move || {
                    let db = db.clone();
                    async move { db.ping().await.map_err(|e| e.to_string()) }
                })
                .with_probe("redis", move || {
                    let redis = redis.clone();
                    async move { redis.ping().await.map_err(|e| e.to_string()) }
                })
        };
        let server = HttpServer::bind(&format!("{}:{}", config.host, config.port)).await?;
        let state = Arc::new(ApiState {
            config: config.clone(),
            stream,
            store,
            metrics: aggregator_metrics,
            backlog: Arc::new(AtomicU64::new(0)),
            limiter,
            publish_slots: Arc::new(tokio::sync::Semaphore::new(config.max_publish_in_flight)),
            started: Instant::now(),
        });
        Ok(Self {
            config,
            server,
            state,
            health,
            metrics,
            http_metrics,
        })
    }

    /// Where the HTTP API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The app's metric registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves and consumes until `shutdown`; then stops accepting, lets requests and the
    /// batches in hand finish (at most `shutdown_timeout_ms`), and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            server,
            state,
            health,
            metrics,
            http_metrics,
        } = self;
        let mut tasks = JoinSet::new();
        let consumer_prefix = config.consumer_prefix();
        // Counter rows of this process: random so replicas rarely share one.
        let shard_base = fastrand::i32(0..10_000_000) * 100;
        for i in 0..config.worker_count {
            let conn = queue::connect(
                config.redis_url.expose(),
                Config::ms(config.read_block_ms) + Duration::from_secs(5),
            )
            .await?;
            let worker = Worker {
                consumer: Consumer::new(
                    conn,
                    state.stream.clone(),
                    format!("{consumer_prefix}-{i}"),
                    config.read_count,
                    Config::ms(config.read_block_ms),
                    Config::ms(config.claim_idle_ms),
                ),
                store: state.store.clone(),
                metrics: state.metrics.clone(),
                shard: shard_base + i32::try_from(i).unwrap_or(0),
                claim_idle: Config::ms(config.claim_idle_ms),
                round_events: config.round_events,
            };
            tasks.spawn(worker.run(shutdown.clone()));
        }
        if let Some(url) = &config.amqp_url {
            let ingress = AmqpIngress {
                url: url.expose().clone(),
                queue: config.amqp_queue.clone(),
                prefetch: config.amqp_prefetch,
                store: state.store.clone(),
                metrics: state.metrics.clone(),
                shard: shard_base + 99,
                max_batch_events: config.max_batch_events,
                round_events: config.round_events,
            };
            tasks.spawn(ingress.run(shutdown.clone()));
        }
        tasks.spawn(maintain(
            state.clone(),
            shutdown.clone(),
            Duration::from_secs(config.consumed_retention_hours.saturating_mul(3600)),
        ));

        let router = http::router(state.clone(), &health, &metrics, http_metrics);
        health.set_ready(true);
        let readiness = health.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            token.cancelled().await;
            readiness.set_ready(false);
        });
        tracing::info!(workers = config.worker_count, consumer = %consumer_prefix, stream = %config.stream_key, "aggregator started");
        let served = server.serve(router, shutdown.clone()).await;
        shutdown.cancel();
        let deadline = Config::ms(config.shutdown_timeout_ms);
        if tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                ?deadline,
                "workers did not stop in time; aborting them (their entries stay pending)"
            );
            tasks.abort_all();
        }
        tracing::info!("aggregator stopped");
        Ok(served?)
    }
}

/// Keeps the backlog figure fresh (creating the consumer group again if Redis lost it) and
/// prunes consumed-entry records that can no longer be needed.
async fn maintain(state: Arc<ApiState>, shutdown: CancellationToken, amqp_retention: Duration) {
    let mut next_prune = Instant::now();
    let mut next_retain = Instant::now();
    loop {
        match state.stream.backlog().await {
            Ok(b) => {
                state.backlog.store(b.length, Ordering::Relaxed);
                state
                    .metrics
                    .stream_length
                    .set(i64::try_from(b.length).unwrap_or(i64::MAX));
                state
                    .metrics
                    .stream_pending
                    .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
            }
            Err(err) if queue::is_nogroup(&err) => {
                if let Ok(true) = state.stream.ensure_group().await {
                    state.metrics.group_recreated.inc();
                    tracing::error!(
                        stream = state.stream.key(),
                        "the consumer group was missing (Redis lost its data?); created it again"
                    );
                }
            }
            Err(_) => {}
        }
        if let Some(limiter) = &state.limiter
            && Instant::now() >= next_retain
        {
            // Forget clients whose allowance is full again, so the table of client addresses
            // does not grow with every address ever seen (it walks every key: not too often).
            next_retain = Instant::now() + RETAIN_EVERY;
            limiter.retain_recent();
        }
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            prune(&state, amqp_retention).await;
        }
        tokio::select! {
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Forgets consumed stream entries that cannot be delivered again (older than anything still in
/// the stream) and AMQP message ids older than the retention.
pub async fn prune(state: &ApiState, amqp_retention: Duration) {
    let bound = match state.stream.deliverable_from().await {
        Ok(bound) => bound,
        Err(err) => {
            tracing::debug!(error = %err, "reading the stream's first entry failed; not pruning");
            return;
        }
    };
    match state.store.prune_consumed(bound, amqp_retention).await {
        Ok(0) | Err(_) => {}
        Ok(n) => tracing::info!(pruned = n, "forgot consumed entries that cannot come back"),
    }
}
