//! sluice-dashboard: the pipeline's results, live, per role: a JSON API, WebSocket updates
//! and a web page served by one binary (DESIGN §6, issue 10). It reads only databases (results
//! from MongoDB, the aggregator's counters from Postgres, its streams from Redis) and publishes
//! what an accountant enters to Kafka, so that input takes the same path as any other.
//!
//! # Layout
//! - [`config`]: settings from the environment, errors naming the setting.
//! - [`users`]: users and roles in Postgres, argon2id hashes.
//! - [`sessions`]: server-side sessions in Redis (idle and absolute expiry).
//! - [`auth`]: login (rate-limited, no user enumeration), logout, the [`auth::Caller`]
//!   extractor that checks the session, the role and CSRF.
//! - [`api`]: the routes and the role each needs; [`web`]: the embedded page.
//! - [`results`]: the analytics collections in MongoDB; [`system`]: the aggregator's figures.
//! - [`input`]: accountant input validation; [`kafka`]: the idempotent producer and lag.
//! - [`live`]: the fan-out with a bounded queue per client; `watchers`: one poll per source.
//! - [`metrics`]: Prometheus metrics; [`cli`]: `sluice-dashboard user add`.
//!
//! [`App::build`] connects, migrates and binds; [`App::run`] serves until the token is
//! cancelled, then closes WebSockets with 1001 (going away) and finishes requests in flight.
//!
//! # Example
//! ```no_run
//! # async fn run() -> sluice_dashboard::Result<()> {
//! use sluice_dashboard::{App, Config};
//! let app = App::build(Config { port: 0, ..Config::default() }).await?;
//! println!("dashboard at http://{}/", app.local_addr());
//! app.run(sluice_core::shutdown::on_signal()).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod input;
pub mod kafka;
pub mod live;
pub mod metrics;
pub mod results;
pub mod sessions;
pub mod system;
pub mod users;
mod watchers;
pub mod web;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::middleware;
use sluice_core::{
    health::Health,
    http::HttpServer,
    telemetry::{HttpMetrics, Metrics},
};
use sluice_resilience::{FailureMode, RedisLimiter};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::{
    config::Config,
    error::{Error, Result},
};
use crate::{
    kafka::Publisher,
    live::{Hub, SessionSlots},
    metrics::DashboardMetrics,
    results::{Collection, ResultStore},
    sessions::SessionStore,
    system::SystemReader,
    users::UserStore,
    watchers::{Counts, SystemSources},
};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub(crate) config: Config,
    pub(crate) users: UserStore,
    pub(crate) sessions: SessionStore,
    pub(crate) login_per_ip: RedisLimiter,
    pub(crate) login_per_user: RedisLimiter,
    pub(crate) results: ResultStore,
    pub(crate) system: SystemSources,
    pub(crate) publisher: Publisher,
    pub(crate) hub: Arc<Hub>,
    pub(crate) ws_slots: SessionSlots,
    pub(crate) metrics: DashboardMetrics,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// A built dashboard: connected, migrated, listening.
#[derive(Debug)]
pub struct App {
    server: HttpServer,
    state: Arc<AppState>,
    health: Health,
    metrics: Metrics,
    http_metrics: HttpMetrics,
    counts: Counts,
}

/// Connects to Postgres and applies the workspace's migrations (the same set as the
/// aggregator; a newer migration applied by a newer service is tolerated).
pub async fn connect_postgres(config: &Config) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(config.database_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(config.database_url.expose())
        .await?;
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await?;
    Ok(pool)
}

fn redis_pool(config: &Config) -> Result<deadpool_redis::Pool> {
    let mut cfg = deadpool_redis::Config::from_url(config.redis_url.expose().clone());
    let mut pool = deadpool_redis::PoolConfig::new(config.redis_pool_size);
    let wait = Some(Duration::from_secs(2));
    pool.timeouts = deadpool_redis::Timeouts {
        wait,
        create: wait,
        recycle: wait,
    };
    cfg.pool = Some(pool);
    Ok(cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))?)
}

impl App {
    /// Connects to every dependency, applies migrations, creates the first admin if asked and
    /// none exists, and binds the port.
    pub async fn build(config: Config) -> Result<Self> {
        let metrics = Metrics::new("dashboard")?;
        let dashboard_metrics = DashboardMetrics::new(&metrics)?;
        let http_metrics = HttpMetrics::new(&metrics)?;
        let pg = connect_postgres(&config).await?;
        let users = UserStore::new(pg.clone())?;
        if let (Some(name), Some(password)) = (&config.admin_user, &config.admin_password)
            && users.ensure_first_admin(name, password.expose()).await?
        {
            tracing::info!(user = %name, "created the first admin");
        }
        let redis = redis_pool(&config)?;
        let limiter_conn = redis::aio::ConnectionManager::new(redis::Client::open(
            config.redis_url.expose().as_str(),
        )?)
        .await?;
        let limiter = |kind: &str, per_minute: u32, setting: &'static str| {
            let prefix = format!("{}login:{kind}:", config.redis_prefix);
            RedisLimiter::new(
                limiter_conn.clone(),
                prefix,
                f64::from(per_minute) / 60.0,
                per_minute,
            )
            .map(|l| l.with_failure_mode(FailureMode::Closed))
            .map_err(|e| Error::Config {
                setting,
                reason: e.to_string(),
            })
        };
        let login_per_ip = limiter(
            "ip",
            config.login_per_ip_per_minute,
            "SLUICE_DASHBOARD_LOGIN_PER_IP_PER_MINUTE",
        )?;
        let login_per_user = limiter(
            "user",
            config.login_per_user_per_minute,
            "SLUICE_DASHBOARD_LOGIN_PER_USER_PER_MINUTE",
        )?;
        let sessions = SessionStore::new(
            redis.clone(),
            &config.redis_prefix,
            Duration::from_secs(config.session_idle_secs),
            Duration::from_secs(config.session_absolute_secs),
        );
        let results = ResultStore::connect(
            config.mongodb_url.expose(),
            &config.mongodb_database,
            config.max_rows,
        )
        .await?;
        let publisher = Publisher::new(&config.kafka_brokers)?;
        let counts = Counts::default();
        let system = SystemSources {
            reader: SystemReader::new(
                pg.clone(),
                redis.clone(),
                &config.aggregator_stream,
                &config.aggregator_group,
            ),
            publisher: publisher.clone(),
            analytics_group: config.analytics_group.clone(),
            analytics_topics: vec![config.sales_topic(), config.inventory_topic()],
            counts: counts.clone(),
        };
        let health = {
            let (db, r, m) = (pg.clone(), redis.clone(), results.clone());
            Health::new()
                .with_probe("database", move || {
                    let db = db.clone();
                    async move {
                        sqlx::query("SELECT 1")
                            .execute(&db)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                })
                .with_probe("redis", move || {
                    let r = r.clone();
                    async move {
                        let mut conn = r.get().await.map_err(|e| e.to_string())?;
                        redis::cmd("PING")
                            .query_async::<()>(&mut *conn)
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
                .with_probe("mongodb", move || {
                    let m = m.clone();
                    async move { m.ping().await.map_err(|e| e.to_string()) }
                })
        };
        let server = HttpServer::bind(&format!("{}:{}", config.host, config.port)).await?;
        let state = Arc::new(AppState {
            hub: Arc::new(Hub::new(config.client_queue)),
            ws_slots: SessionSlots::new(config.ws_per_session),
            config,
            users,
            sessions,
            login_per_ip,
            login_per_user,
            results,
            system,
            publisher,
            metrics: dashboard_metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Ok(Self {
            server,
            state,
            health,
            metrics,
            http_metrics,
            counts,
        })
    }

    /// Where the HTTP server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The app's metric registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live-update hub (tests publish through it directly).
    pub fn hub(&self) -> Arc<Hub> {
        self.state.hub.clone()
    }

    /// Serves until `shutdown`; then closes every WebSocket with 1001 (going away), lets
    /// requests in flight finish (at most `shutdown_timeout_ms`) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            server,
            state,
            health,
            metrics,
            http_metrics,
            counts,
        } = self;
        let interval = Config::ms(state.config.poll_interval_ms);
        let stop = state.shutdown.clone();
        let mut tasks = JoinSet::new();
        for c in Collection::ALL {
            tasks.spawn(watchers::watch_collection(
                c,
                state.results.clone(),
                state.hub.clone(),
                counts.clone(),
                interval,
                stop.clone(),
            ));
        }
        for shard in state.hub.fan_out(&state.metrics, &stop) {
            tasks.spawn(shard);
        }
        tasks.spawn(watchers::watch_system(
            state.system.clone(),
            state.hub.clone(),
            interval,
            stop.clone(),
        ));
        let router = api::router(state.clone())
            .merge(health.router())
            .merge(metrics.router())
            .layer(middleware::from_fn_with_state(
                http_metrics,
                HttpMetrics::track,
            ));
        health.set_ready(true);
        let (readiness, outer, inner) = (health.clone(), shutdown.clone(), stop.clone());
        tasks.spawn(async move {
            outer.cancelled().await;
            readiness.set_ready(false);
            inner.cancel();
        });
        tracing::info!("dashboard started");
        let served = server.serve(router, stop.clone()).await;
        stop.cancel();
        // WebSocket tasks are detached from the HTTP server: wait for their close frames.
        state.tracker.close();
        let deadline = Config::ms(state.config.shutdown_timeout_ms);
        if tokio::time::timeout(deadline, async {
            state.tracker.wait().await;
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(?deadline, "tasks did not stop in time; aborting them");
            tasks.abort_all();
        }
        state.results.shutdown().await;
        tracing::info!("dashboard stopped");
        Ok(served?)
    }
}
