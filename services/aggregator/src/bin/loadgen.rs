//! `sluice-loadgen`: the seed's publisher and load test, plus the Postgres ceiling the
//! aggregator is measured against (`make bench`).
//!
//! ```text
//! sluice-loadgen http --url http://127.0.0.1:8080 --events 1000000 --duplicate-rate 0.3 \
//!     --batch-size 500 --clients 10 --wait-consumed
//! sluice-loadgen http --duration-secs 60 --pause-ms 100 --batch-size 100 --clients 10   # seed profile
//! sluice-loadgen ceiling --database-url postgres://… --events 1000000 --batch-size 500 --clients 10
//! ```

#![expect(
    clippy::print_stdout,
    reason = "a command-line tool: its report goes to stdout"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-loadgen",
    about = "Load generator for the sluice aggregator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// POST batches to /publish from concurrent clients; print throughput and latency.
    Http(HttpArgs),
    /// Write the same rows straight into Postgres with batched INSERT … unnest … ON CONFLICT.
    Ceiling(CeilingArgs),
}

#[derive(Debug, Args, Clone)]
struct Load {
    /// Events in all (ignored when --duration-secs is set).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Share of events that repeat an earlier (topic, event_id).
    #[arg(long, default_value_t = 0.3)]
    duplicate_rate: f64,
    /// Events per request; a range like 100..1000 picks one per request.
    #[arg(long, default_value = "100")]
    batch_size: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: u64,
    /// Distinct topics.
    #[arg(long, default_value_t = 10)]
    topics: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Args)]
struct HttpArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "AGGREGATOR_URL")]
    url: String,
    #[command(flatten)]
    load: Load,
    /// Run for this long instead of a fixed number of events.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Pause of each client between requests.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Pace the clients to this many events per second in all (instead of pausing).
    #[arg(long)]
    rate: Option<f64>,
    /// After the load, poll /stats until every accepted event is consumed and report when.
    #[arg(long)]
    wait_consumed: bool,
    /// During the load, every 50 ms publish one probe event and time how long until
    /// `/events?topic=…` shows it (publish-to-visible latency).
    #[arg(long)]
    probe: bool,
}

#[derive(Debug, Args)]
struct CeilingArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    load: Load,
}

/// Deterministic events for one client: new ids, and with `duplicate_rate` one seen before.
struct Generator {
    rng: fastrand::Rng,
    client: u64,
    next_id: u64,
    topics: u64,
    duplicate_rate: f64,
    batch: (usize, usize),
}

impl Generator {
    fn new(load: &Load, client: u64) -> anyhow::Result<Self> {
        let batch = match load.batch_size.split_once("..") {
            Some((a, b)) => (a.parse()?, b.parse()?),
            None => {
                let n = load.batch_size.parse()?;
                (n, n)
            }
        };
        if batch.0 == 0 || batch.0 > batch.1 {
            bail!("--batch-size must be N or A..B with 0 < A <= B");
        }
        Ok(Self {
            rng: fastrand::Rng::with_seed(load.seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            client,
            next_id: 0,
            topics: load.topics.max(1),
            duplicate_rate: load.duplicate_rate.clamp(0.0, 1.0),
            batch,
        })
    }

    fn batch_len(&mut self) -> usize {
        self.rng.usize(self.batch.0..=self.batch.1)
    }

    /// (topic, event_id) of the next event and whether it is a duplicate.
    fn next_key(&mut self) -> (String, String, bool) {
        let dup = self.next_id > 0 && self.rng.f64() < self.duplicate_rate;
        let n = if dup {
            self.rng.u64(0..self.next_id)
        } else {
            self.next_id
        };
        if !dup {
            self.next_id += 1;
        }
        (
            format!("topic-{}", n % self.topics),
            format!("c{}-{n}", self.client),
            dup,
        )
    }

    fn event(&mut self) -> (Value, bool) {
        let (topic, event_id, dup) = self.next_key();
        let v = json!({
            "topic": topic, "event_id": event_id, "source": "loadgen",
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "payload": {"client": self.client, "value": self.rng.u32(..), "note": "é ✓"},
        });
        (v, dup)
    }

    /// A request body of at most `max` events (one `batch_len` unless fewer remain).
    fn request(&mut self, max: u64) -> Request {
        let n = self
            .batch_len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        let mut events = Vec::with_capacity(n);
        let mut dups = 0;
        for _ in 0..n {
            let (e, dup) = self.event();
            dups += u64::from(dup);
            events.push(e);
        }
        let body = serde_json::to_vec(&json!({ "events": events })).unwrap_or_default();
        Request {
            events: n as u64,
            dups,
            body: body.into(),
        }
    }

    /// Every request body for `events` events, made before the clock starts: a fixed-size
    /// load measures the system under test, not how fast this tool builds JSON.
    fn requests(&mut self, events: u64) -> std::collections::VecDeque<Request> {
        let mut out = std::collections::VecDeque::new();
        let mut left = events;
        while left > 0 {
            let r = self.request(left);
            left -= r.events;
            out.push_back(r);
        }
        out
    }
}

/// One `/publish` body.
#[derive(Clone)]
struct Request {
    events: u64,
    dups: u64,
    body: axum::body::Bytes,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run_http(args: HttpArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let publish = format!("{}/publish", args.url.trim_end_matches('/'));
    let stats_url = format!("{}/stats", args.url.trim_end_matches('/'));
    let received_before = stats(&client, &stats_url).await?.0;
    let per_client = args.load.events.div_ceil(args.load.clients.max(1));
    let deadline = args
        .duration_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let sent = Arc::new(AtomicU64::new(0));
    // A fixed number of events is prepared before the clock starts; a timed run makes them as
    // it goes.
    let mut clients = Vec::new();
    for c in 0..args.load.clients.max(1) {
        let mut generator = Generator::new(&args.load, c)?;
        let prepared = deadline.is_none().then(|| generator.requests(per_client));
        clients.push((generator, prepared));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut generator, mut prepared) in clients {
        let (client, publish, sent) = (client.clone(), publish.clone(), sent.clone());
        let pause = Duration::from_millis(args.pause_ms);
        let mut pacer = match args.rate {
            Some(rate) if rate > 0.0 => {
                let per_request = generator.batch.0 as f64 * args.load.clients.max(1) as f64 / rate;
                let mut interval = tokio::time::interval(Duration::from_secs_f64(per_request));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(interval)
            }
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut mine, mut dups, mut rejected) = (0u64, 0u64, 0u64);
            loop {
                let request = match (&mut prepared, deadline) {
                    (Some(prepared), _) => match prepared.front() {
                        Some(r) => r.clone(),
                        None => break,
                    },
                    (None, Some(d)) if Instant::now() >= d => break,
                    (None, _) => generator.request(u64::MAX),
                };
                if let Some(pacer) = pacer.as_mut() {
                    pacer.tick().await;
                }
                let t = Instant::now();
                let response = client
                    .post(&publish)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(request.body)
                    .send()
                    .await;
                latencies.push(t.elapsed());
                match response {
                    Ok(r) if r.status().as_u16() == 202 => {
                        mine += request.events;
                        dups += request.dups;
                        sent.fetch_add(request.events, Ordering::Relaxed);
                        if let Some(prepared) = prepared.as_mut() {
                            prepared.pop_front();
                        }
                    }
                    Ok(r)
                        if r.status().is_client_error()
                            && ![408, 429].contains(&r.status().as_u16()) =>
                    {
                        // Refused for good: sending it again would be refused again.
                        rejected += 1;
                        if let Some(prepared) = prepared.as_mut() {
                            prepared.pop_front();
                        }
                    }
                    Ok(r) => {
                        rejected += 1;
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    Err(_) => rejected += 1,
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            (latencies, mine, dups, rejected)
        }));
    }
    let probe = args.probe.then(|| {
        tokio::spawn(probe_visibility(
            client.clone(),
            args.url.clone(),
            sent.clone(),
            per_client * args.load.clients.max(1),
            deadline,
        ))
    });
    let progress = {
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "… {} events accepted after {:.0?}",
                    sent.load(Ordering::Relaxed),
                    start.elapsed()
                );
            }
        })
    };
    let mut latencies = Vec::new();
    let (mut total, mut rejected) = (0u64, 0u64);
    for t in tasks {
        let (l, n, _dups, r) = t.await?;
        latencies.extend(l);
        total += n;
        rejected += r;
    }
    progress.abort();
    let load_time = start.elapsed();
    latencies.sort();
    println!(
        "published {total} events in {} requests ({rejected} refused) in {:.2?}: {:.0} events/s",
        latencies.len(),
        load_time,
        total as f64 / load_time.as_secs_f64()
    );
    println!(
        "publish latency p50 {:.2?} p95 {:.2?} p99 {:.2?} max {:.2?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    if let Some(probe) = probe {
        let mut visible = probe.await??;
        visible.sort();
        println!(
            "publish-to-visible ({} probes) p50 {:.2?} p99 {:.2?} max {:.2?}",
            visible.len(),
            percentile(&visible, 0.50),
            percentile(&visible, 0.99),
            visible.last().copied().unwrap_or_default()
        );
    }
    let (received_now, _) = stats(&client, &stats_url).await?;
    println!(
        "consumed at end of load: {} of {total}",
        received_now - received_before
    );
    if args.wait_consumed {
        let load_end = Instant::now();
        loop {
            let (received, _) = stats(&client, &stats_url).await?;
            if received - received_before >= total as i64 {
                break;
            }
            if load_end.elapsed() > Duration::from_secs(1800) {
                bail!("not all consumed after 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = start.elapsed();
        println!(
            "all consumed {:.2?} after the start ({:.0} events/s end to end), {:.2?} after the load ended",
            all,
            total as f64 / all.as_secs_f64(),
            load_end.elapsed()
        );
    }
    Ok(())
}

/// Publishes a probe event every 50 ms while the load runs and measures 202 → visible in /events.
async fn probe_visibility(
    client: reqwest::Client,
    base: String,
    sent: Arc<AtomicU64>,
    target: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<Vec<Duration>> {
    let base = base.trim_end_matches('/').to_owned();
    let topic = format!("probe-{}", std::process::id());
    let mut latencies = Vec::new();
    for n in 0u64.. {
        let running = match deadline {
            Some(d) => Instant::now() < d,
            None => sent.load(Ordering::Relaxed) < target,
        };
        if !running {
            break;
        }
        let id = format!("probe-{n}");
        let event = json!({"topic": topic, "event_id": id, "source": "probe", "timestamp": chrono::Utc::now().to_rfc3339()});
        let r = client
            .post(format!("{base}/publish"))
            .json(&event)
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            continue;
        }
        let accepted = Instant::now();
        let url = format!("{base}/events?topic={topic}&limit=1");
        loop {
            let latest: Value = client.get(&url).send().await?.json().await?;
            if latest[0]["event_id"].as_str() == Some(id.as_str()) {
                latencies.push(accepted.elapsed());
                break;
            }
            if accepted.elapsed() > Duration::from_secs(30) {
                bail!("probe {id} not visible after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(latencies)
}

async fn stats(client: &reqwest::Client, url: &str) -> anyhow::Result<(i64, Value)> {
    let v: Value = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((
        v["received"].as_i64().context("/stats has no `received`")?,
        v,
    ))
}

async fn run_ceiling(args: CeilingArgs) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(args.load.clients).unwrap_or(10).max(1))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    let per_client = args.load.events.div_ceil(args.load.clients.max(1));
    // Every statement's rows are made before the clock starts, as for `http`.
    let mut clients = Vec::new();
    for c in 0..args.load.clients.max(1) {
        let mut generator = Generator::new(&args.load, c)?;
        let mut statements = Vec::new();
        let mut left = per_client;
        while left > 0 {
            let n = generator
                .batch_len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let mut rows: Vec<(String, String, Value)> = (0..n)
                .map(|_| {
                    let (mut e, _) = generator.event();
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    (text(&e["topic"]), text(&e["event_id"]), e["payload"].take())
                })
                .collect();
            rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            statements.push(rows);
            left -= n as u64;
        }
        clients.push(statements);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for statements in clients {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            for rows in statements {
                let topics: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
                let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
                let payloads: Vec<sqlx::types::Json<&Value>> =
                    rows.iter().map(|r| sqlx::types::Json(&r.2)).collect();
                sqlx::query(
                    "INSERT INTO processed_events (topic, event_id, source, timestamp, payload)
                     SELECT t, e, 'loadgen', now(), p FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS u(t, e, p)
                     ON CONFLICT (topic, event_id) DO NOTHING",
                )
                .bind(&topics)
                .bind(&ids)
                .bind(&payloads)
                .execute(&pool)
                .await?;
                done += rows.len() as u64;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let took = start.elapsed();
    println!(
        "ceiling: {total} events in {took:.2?}: {:.0} events/s",
        total as f64 / took.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Http(args) => run_http(args).await,
        Command::Ceiling(args) => run_ceiling(args).await,
    }
}
