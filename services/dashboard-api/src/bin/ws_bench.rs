//! `sluice-dashboard-ws-bench` (feature `bench`, run by `make bench`): N WebSocket clients of
//! which 5 % never read, an update every 100 ms, through the dashboard's broadcast and then
//! through a naive one that awaits every client (seed 002's `gather()`). Prints delivery
//! latency percentiles for the reading clients, updates delivered, and the process's peak RSS.
//!
//! Latency is measured from the moment each update was due (start + seq × interval), so an
//! update that a broadcast could not even start on time counts as late. The clients that never
//! read use a 4 KiB receive buffer, like a stalled mobile client, so the server's sends to them
//! block after a few updates. Needs the servers of scripts/deps.sh and `ulimit -n` ≥ 2 × N + 1000.
//!
//! Settings (environment): `SLUICE_BENCH_CLIENTS` (10000), `SLUICE_BENCH_SECONDS` (20),
//! `SLUICE_BENCH_FRAME_BYTES` (2048), `SLUICE_BENCH_POSTGRES` (`postgres://postgres@127.0.0.1:5432`).

#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

#[path = "ws_bench/naive.rs"]
mod naive;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::extract::ws::Utf8Bytes;
use futures::{StreamExt, stream};
use sluice_core::config::Secret;
use sluice_dashboard::{
    App, Config,
    sessions::SessionStore,
    users::{Role, UserStore},
};
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_millis(100);
const SILENT_EVERY: usize = 20; // 5 %

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soft limit of open files, from /proc (no libc: `unsafe` is forbidden here).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What one run measured.
struct Outcome {
    latencies_us: Vec<u64>,
    expected: u64,
    published: u64,
    rss_connected: f64,
    rss_peak: f64,
    connect_secs: f64,
}

/// Connects `n` clients to `addr` (with `cookie`), publishes for `seconds` through `publish`,
/// and collects the readers' latencies.
async fn run<F, Fut>(
    addr: SocketAddr,
    cookie: Option<String>,
    n: usize,
    seconds: u64,
    frame_bytes: usize,
    publish: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(Utf8Bytes) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let connects = stream::iter(0..n).map(|i| {
        let cookie = cookie.clone();
        async move {
            let socket = TcpSocket::new_v4()?;
            if i % SILENT_EVERY == 0 {
                socket.set_recv_buffer_size(4096)?;
            }
            let tcp = socket.connect(addr).await?;
            let mut req = format!("ws://{addr}/api/ws?topics=winners").into_client_request()?;
            if let Some(c) = &cookie {
                req.headers_mut().insert("cookie", c.parse()?);
            }
            let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
            anyhow::Ok((i, ws))
        }
    });
    let sockets: Vec<_> = connects.buffer_unordered(200).collect().await;
    let connect_secs = started.elapsed().as_secs_f64();
    let stop = CancellationToken::new();
    let due_epoch = Instant::now() + Duration::from_millis(500);
    let mut silent = Vec::new();
    let mut readers = Vec::new();
    for s in sockets {
        let (i, ws) = s.context("connecting a client")?;
        if i % SILENT_EVERY == 0 {
            silent.push(ws);
            continue;
        }
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut latencies = Vec::new();
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let text = text.as_str();
                // `"seq":N` sits at the start of the data: no need to parse 2 kB of JSON.
                let Some(at) = text.find("\"seq\":") else {
                    continue;
                };
                let digits: String = text[at + 6..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(seq) = digits.parse::<u32>() {
                    let due = due_epoch + INTERVAL * seq;
                    latencies
                        .push(Instant::now().saturating_duration_since(due).as_micros() as u64);
                }
            }
            latencies
        }));
    }
    let rss_connected = rss_mib();
    let peak = Arc::new(AtomicU64::new(rss_connected as u64));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max(rss_mib() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let updates = seconds * 1000 / INTERVAL.as_millis() as u64;
    let pad = "x".repeat(frame_bytes.saturating_sub(80));
    let published = AtomicU64::new(0);
    let publishing = async {
        for seq in 0..updates {
            tokio::time::sleep_until((due_epoch + INTERVAL * seq as u32).into()).await;
            let text = format!(
                r#"{{"type":"snapshot","topic":"winners","data":{{"seq":{seq},"pad":"{pad}"}}}}"#
            );
            publish(Utf8Bytes::from(text)).await;
            published.fetch_add(1, Ordering::Relaxed);
        }
    };
    // A naive broadcast may never finish a round: give up at the end of the run.
    let _ = tokio::time::timeout(
        Duration::from_secs(seconds) + Duration::from_millis(500),
        publishing,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the last updates arrive
    stop.cancel();
    let _ = sampler.await;
    let reader_count = readers.len() as u64;
    let mut latencies_us = Vec::new();
    for r in readers {
        latencies_us.extend(r.await.unwrap_or_default());
    }
    drop(silent);
    latencies_us.sort_unstable();
    Ok(Outcome {
        latencies_us,
        expected: updates * reader_count,
        published: published.load(Ordering::Relaxed),
        rss_connected,
        rss_peak: peak.load(Ordering::Relaxed) as f64,
        connect_secs,
    })
}

fn report(name: &str, o: &Outcome) {
    let pct = |p: f64| {
        if o.latencies_us.is_empty() {
            return "–".to_owned();
        }
        let i = ((o.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        format!("{:.1}", o.latencies_us[i] as f64 / 1000.0)
    };
    println!(
        "| {name} | {} | {}/{} ({:.1} %) | {} | {} | {} | {:.0} | {:.0} | {:.1} |",
        o.published,
        o.latencies_us.len(),
        o.expected,
        100.0 * o.latencies_us.len() as f64 / o.expected.max(1) as f64,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        o.rss_connected,
        o.rss_peak,
        o.connect_secs,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let asked = env_num("SLUICE_BENCH_CLIENTS", 10_000) as usize;
    // Both ends of every socket live in this process: two descriptors per client.
    let fits = open_files_limit().map_or(asked, |l| l.saturating_sub(1_000) / 2);
    let n = asked.min(fits);
    if n < asked {
        println!(
            "note: {asked} clients asked, {n} fit under this process's open-file limit (raise `ulimit -n`)\n"
        );
    }
    let seconds = env_num("SLUICE_BENCH_SECONDS", 20);
    let frame_bytes = env_num("SLUICE_BENCH_FRAME_BYTES", 2048) as usize;
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
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Secret::new(format!("{server}/{name}")),
        redis_prefix: format!("sluice:bench:{name}:"),
        aggregator_stream: format!("sluice:bench:{name}:events"),
        mongodb_database: name.clone(),
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
    // One session for every socket: logging in 10,000 times would measure argon2, not sockets.
    let pool = sqlx::PgPool::connect(config.database_url.expose()).await?;
    UserStore::new(pool.clone())?
        .add("bench", Role::Viewer, "bench password")
        .await?;
    let redis = deadpool_redis::Config::from_url(config.redis_url.expose().clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let session = SessionStore::new(
        redis,
        &config.redis_prefix,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .create("bench")
    .await?;
    let cookie = format!("{}={}", config.cookie_name, session.id);

    println!(
        "{n} clients ({} never read), an update of {frame_bytes} bytes every {INTERVAL:?} for {seconds} s\n",
        n / SILENT_EVERY
    );
    println!(
        "| broadcast | updates sent | deliveries to readers | p50 ms | p99 ms | max ms | RSS connected MiB | RSS peak MiB | connect s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ours = run(addr, Some(cookie), n, seconds, frame_bytes, |text| {
        let hub = hub.clone();
        async move { hub.publish_text("winners", text) }
    })
    .await?;
    report("sluice-dashboard (bounded queue, skip/drop)", &ours);
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    let text = metrics.render();
    let line = |m: &str| {
        text.lines()
            .find(|l| l.starts_with(m))
            .unwrap_or(m)
            .to_owned()
    };
    println!(
        "\n{}  \n{}",
        line("dashboard_ws_dropped_total"),
        line("dashboard_ws_skipped_total")
    );
    drop(pool);

    let naive = naive::NaiveServer::start().await?;
    let naive_outcome = run(naive.addr, None, n, seconds, frame_bytes, |text| {
        let naive = naive.clone();
        async move { naive.broadcast(text).await }
    })
    .await?;
    println!();
    report("naive (awaits every client)", &naive_outcome);
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await?;
    Ok(())
}
