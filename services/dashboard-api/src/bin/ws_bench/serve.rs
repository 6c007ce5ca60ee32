//! The server process: the real dashboard (its own Postgres database, Redis prefix and Mongo
//! database, one session per client) or the naive server, and the publisher, which sends one
//! update every 100 ms once the orchestrator says `go`.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use axum::extract::ws::Utf8Bytes;
use sluice_core::config::Secret;
use sluice_dashboard::{
    App, Config,
    sessions::SessionStore,
    users::{Role, UserStore},
};
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::{INTERVAL, env_num, naive::NaiveServer, proc_stats};

/// Reads one line from stdin off the runtime's threads; `Ok(None)` at its end.
async fn stdin_line() -> anyhow::Result<Option<String>> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map(|n| (n > 0).then_some(line))
    })
    .await??;
    Ok(line.map(|l| l.trim().to_owned()))
}

async fn expect_line(word: &str) -> anyhow::Result<()> {
    match stdin_line().await? {
        Some(line) if line == word => Ok(()),
        other => bail!("server: expected `{word}`, got {other:?}"),
    }
}

/// Waits for `go`, publishes for the run's length, and reports `done …`.
async fn publish_run<F, Fut>(publish: F) -> anyhow::Result<()>
where
    F: Fn(Utf8Bytes) -> Fut,
    Fut: Future<Output = ()>,
{
    let seconds = env_num("SLUICE_BENCH_SECONDS", 20);
    let frame_bytes = env_num("SLUICE_BENCH_FRAME_BYTES", 2048) as usize;
    expect_line("go").await?;
    let rss_connected = proc_stats::rss_mib();
    let cpu_before = proc_stats::cpu_secs();
    let peak = Arc::new(AtomicU64::new(rss_connected as u64));
    let tcp_peak = Arc::new(AtomicU64::new(proc_stats::tcp_kernel_mib() as u64));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, tcp_peak, running) = (peak.clone(), tcp_peak.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(proc_stats::rss_mib() as u64, Ordering::Relaxed);
                tcp_peak.fetch_max(proc_stats::tcp_kernel_mib() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let lead = Duration::from_millis(500);
    let start = Instant::now() + lead;
    let start_us = (SystemTime::now() + lead)
        .duration_since(UNIX_EPOCH)?
        .as_micros() as u64;
    let updates = seconds * 1000 / INTERVAL.as_millis() as u64;
    let pad = "x".repeat(frame_bytes.saturating_sub(100));
    let published = AtomicU64::new(0);
    let publishing = async {
        for seq in 0..updates {
            tokio::time::sleep_until((start + INTERVAL * seq as u32).into()).await;
            let due_us = start_us + seq * INTERVAL.as_micros() as u64;
            let text = format!(
                r#"{{"type":"snapshot","topic":"winners","data":{{"due_us":{due_us},"seq":{seq},"pad":"{pad}"}}}}"#
            );
            // Counted when started: a naive round cut short by the end still delivered some.
            published.fetch_add(1, Ordering::Relaxed);
            publish(Utf8Bytes::from(text)).await;
        }
    };
    // A naive broadcast may never finish a round: give up at the end of the run.
    let _ = tokio::time::timeout(Duration::from_secs(seconds) + lead, publishing).await;
    let cpu = proc_stats::cpu_secs() - cpu_before;
    running.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    println!(
        "done {} {rss_connected:.0} {} {cpu:.1} {}",
        published.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed)
            .max(proc_stats::rss_mib() as u64),
        tcp_peak.load(Ordering::Relaxed),
    );
    Ok(())
}

pub(crate) async fn run(kind: &str) -> anyhow::Result<()> {
    match kind {
        "dashboard" => dashboard().await,
        "naive" => {
            let naive = NaiveServer::start().await?;
            println!("ready {}", naive.addr);
            publish_run(|text| {
                let naive = naive.clone();
                async move { naive.broadcast(text).await }
            })
            .await?;
            expect_line("exit").await?;
            println!("bye");
            Ok(())
        }
        other => bail!("no server `{other}`: dashboard or naive"),
    }
}

async fn dashboard() -> anyhow::Result<()> {
    let n = env_num("SLUICE_BENCH_CLIENTS", 10_000) as usize;
    let server = std::env::var("SLUICE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!(
        "sluice_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .context("Postgres (run scripts/deps.sh)")?;
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await?;
    let outcome = dashboard_in(&server, &name, n).await;
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await?;
    outcome?;
    println!("bye");
    Ok(())
}

async fn dashboard_in(server: &str, name: &str, n: usize) -> anyhow::Result<()> {
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Secret::new(format!("{server}/{name}")),
        redis_prefix: format!("sluice:bench:{name}:"),
        aggregator_stream: format!("sluice:bench:{name}:events"),
        mongodb_database: name.to_owned(),
        redis_url: Secret::new(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        mongodb_url: Secret::new("mongodb://127.0.0.1:27017/?directConnection=true".into()),
        kafka_brokers: "127.0.0.1:9092".into(),
        client_queue: 16,
        send_timeout_ms: 5_000,
        ws_recheck_ms: 3_600_000,
        ..Config::default()
    };
    let app = App::build(config.clone()).await?;
    let (addr, hub) = (app.local_addr(), app.hub());
    let metrics = app.metrics().clone();
    let token = CancellationToken::new();
    let serving = tokio::spawn(app.run(token.clone()));
    let pool = sqlx::PgPool::connect(config.database_url.expose()).await?;
    UserStore::new(pool.clone())?
        .add("bench", Role::Viewer, "bench password")
        .await?;
    let redis = deadpool_redis::Config::from_url(config.redis_url.expose().clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let sessions = SessionStore::new(
        redis,
        &config.redis_prefix,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    for _ in 0..n {
        let session = sessions.create("bench").await?;
        println!("cookie {}={}", config.cookie_name, session.id);
    }
    println!("ready {addr}");
    publish_run(|text| {
        let hub = hub.clone();
        async move { hub.publish_text("winners", text) }
    })
    .await?;
    expect_line("exit").await?;
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    let text = metrics.render();
    for name in [
        "dashboard_ws_sent_total",
        "dashboard_ws_skipped_total",
        "dashboard_ws_dropped_total",
    ] {
        if let Some(line) = text.lines().find(|l| l.starts_with(name)) {
            println!("metric {line}");
        }
    }
    Ok(())
}
