//! Starting an aggregator for a test, in-process or as a child process.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_aggregator::{App, Config};
use sluice_core::config::Secret;
use sluice_testkit::{ChildService, InProcess, TestDatabase, TestRedis, eventually};

/// Settings for a test: port 0, the test's database and stream key, quick claims.
pub(crate) fn config(db_url: &str, redis_url: &str, stream_key: &str) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Secret::new(db_url.to_owned()),
        redis_url: Secret::new(redis_url.to_owned()),
        worker_count: 2,
        stream_key: stream_key.to_owned(),
        consumer_name: Some(format!("test-{}", uuid_suffix())),
        read_block_ms: 200,
        claim_idle_ms: 1_000,
        // Generous: a machine busy compiling can take over a second for an XADD, and a 503
        // there is not what these tests are about (faults.rs tests the timeout itself).
        publish_timeout_ms: 5_000,
        shutdown_timeout_ms: 10_000,
        ..Config::default()
    }
}

fn uuid_suffix() -> String {
    sluice_testkit::unique_name("c")
}

/// An aggregator running in this process, with its own database and stream.
pub(crate) struct TestApp {
    pub(crate) db: TestDatabase,
    /// Owns the stream's key prefix (deleted on drop).
    pub(crate) redis: TestRedis,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    app: Option<InProcess<sluice_aggregator::Result<()>>>,
}

impl TestApp {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test's database and stream, after `adjust` changed the config.
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
        let mut cfg = config(db.url(), redis.url(), &redis.key("events"));
        adjust(&mut cfg);
        Self::start_on(db, redis, cfg).await
    }

    /// Starts on a database and Redis prefix the test prepared, with `cfg`.
    pub(crate) async fn start_on(
        db: TestDatabase,
        redis: TestRedis,
        cfg: Config,
    ) -> anyhow::Result<Self> {
        let app = App::build(cfg).await?;
        let base = format!("http://{}", app.local_addr());
        let app = InProcess::spawn(|token| app.run(token));
        Ok(Self {
            db,
            redis,
            base,
            http: reqwest::Client::new(),
            app: Some(app),
        })
    }

    /// The stream's key.
    pub(crate) fn stream_key(&self) -> String {
        self.redis.key("events")
    }

    /// Entries in the stream, of those pending, and entries in the dead-letter stream.
    pub(crate) async fn queue_counts(&self) -> anyhow::Result<QueueCounts> {
        queue_counts(&self.redis, &self.stream_key()).await
    }

    /// The value of a counter or gauge on `/metrics` (0 if absent).
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn publish(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url("/publish"))
            .json(body)
            .send()
            .await?)
    }

    pub(crate) async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.http.get(self.url(path)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// Waits until `/stats` shows `received` events consumed.
    pub(crate) async fn wait_received(&self, received: i64) -> anyhow::Result<Value> {
        wait_received(&self.http, &self.base, received).await
    }

    /// Stops the app gracefully.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(app) = self.app.take() {
            app.stop(Duration::from_secs(20)).await??;
        }
        Ok(())
    }
}

/// What is in the stream, pending and dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    pub(crate) length: u64,
    pub(crate) pending: u64,
    pub(crate) dead: u64,
}

pub(crate) async fn queue_counts(redis: &TestRedis, stream: &str) -> anyhow::Result<QueueCounts> {
    let mut conn = redis.conn();
    let length: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    let dead: u64 = redis::cmd("XLEN")
        .arg(format!("{stream}:dead"))
        .query_async(&mut conn)
        .await?;
    let pending: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
        redis::cmd("XPENDING")
            .arg(stream)
            .arg("aggregator")
            .query_async(&mut conn)
            .await;
    Ok(QueueCounts {
        length,
        pending: pending.map_or(0, |p| p.0),
        dead,
    })
}

/// Polls the queue until its counts are `expected`.
pub(crate) async fn eventually_counts(
    redis: &TestRedis,
    stream: &str,
    expected: QueueCounts,
) -> anyhow::Result<()> {
    eventually(
        &format!("queue counts {expected:?}"),
        Duration::from_secs(30),
        || async { (queue_counts(redis, stream).await.ok()? == expected).then_some(()) },
    )
    .await
}

/// Polls `<base>/stats` until `received` reaches the figure; returns the stats.
pub(crate) async fn wait_received(
    http: &reqwest::Client,
    base: &str,
    received: i64,
) -> anyhow::Result<Value> {
    let url = format!("{base}/stats");
    eventually(
        &format!("{received} events consumed"),
        Duration::from_secs(60),
        || async {
            let stats: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (stats["received"].as_i64() >= Some(received)).then_some(stats)
        },
    )
    .await
}

/// A valid event.
pub(crate) fn event(topic: &str, id: &str) -> Value {
    json!({"topic": topic, "event_id": id, "source": "test", "timestamp": "2025-01-31T12:00:00Z",
           "payload": {"id": id}})
}

/// `n` events of which `dups` (< n) repeat earlier ones, spread evenly: (events, distinct keys).
pub(crate) fn events_with_duplicates(prefix: &str, n: usize, dups: usize) -> (Vec<Value>, usize) {
    let mut events = Vec::with_capacity(n);
    let mut distinct = 0;
    for i in 0..n {
        let dup_slot = (i + 1) * dups / n > i * dups / n;
        let id = if dup_slot && distinct > 0 {
            (i * 7919) % distinct
        } else {
            distinct += 1;
            distinct - 1
        };
        events.push(event("t", &format!("{prefix}-{id}")));
    }
    (events, distinct)
}

/// The aggregator binary as a child process.
pub(crate) async fn spawn_child(envs: &[(&str, String)]) -> anyhow::Result<ChildService> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-aggregator"));
    cmd.env("PORT", "0")
        .env("SLUICE_AGGREGATOR_HOST", "127.0.0.1")
        .env("SLUICE_AGGREGATOR_READ_BLOCK_MS", "200")
        .env("SLUICE_AGGREGATOR_CLAIM_IDLE_MS", "1000")
        .env("RUST_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    ChildService::spawn(cmd, Duration::from_secs(60)).await
}

/// Rows and counters in the database.
pub(crate) async fn db_totals(db: &TestDatabase) -> anyhow::Result<(i64, i64, i64, i64)> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(db.pool())
        .await?;
    let (r, u, d): (i64, i64, i64) = sqlx::query_as(
        "SELECT received_count, unique_processed, duplicate_dropped FROM event_stats WHERE id = 1",
    )
    .fetch_one(db.pool())
    .await?;
    Ok((rows, r, u, d))
}
