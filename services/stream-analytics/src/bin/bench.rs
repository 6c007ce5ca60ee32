//! Stream analytics benchmark (issue 12), against a Kafka-protocol broker and a MongoDB-protocol
//! server (the local ones of scripts/deps.sh by default); run by `scripts/bench/analytics.sh`.
//!
//! 1. Backlog: produces inventory, client records and `--sales` sales (1..=5 line items, three
//!    on average) to fresh topics, then measures, from the same backlog:
//!    - the ceiling: a plain rdkafka consume loop (one consumer in its own group) reading every
//!      sales message once, touching its payload and nothing else;
//!    - the service: the real `sluice-analytics` binary as a child process, from its start until
//!      the offsets its group committed to Kafka cover every sales message: it commits them
//!      only once the results are written (so the time includes joining the group, applying,
//!      writing the state and the results). Also the time until it has applied every sale, and
//!      its CPU time.
//! 2. Latency: with the service caught up, sales at each steady `--rate` for `--seconds`; every
//!    hundredth is a probe with a client id of its own, and the time from handing it to the
//!    producer until its client document is in MongoDB's `clients` is recorded (MongoDB polled
//!    every 5 ms).
//! 3. Memory: the service's resident set (VmRSS) after phase 1 and 2, and, with
//!    `--memory-products`/`--memory-clients`, in a second run whose state holds that many
//!    products and clients (each client with a record and one sale).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its report (stdout) and its progress (stderr)"
)]

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{TryStreamExt as _, future::join_all};
use mongodb::{
    Database,
    bson::{Document, doc},
};
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
    producer::{FutureProducer, FutureRecord},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};

/// Stream analytics benchmark: throughput from a backlog vs a raw consume loop, latency at a
/// steady rate, resident memory.
#[derive(Debug, Parser)]
#[command(name = "sluice-analytics-bench")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// MongoDB URL.
    #[arg(
        long,
        env = "MONGODB_URL",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true"
    )]
    mongodb_url: String,
    /// Sales in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    sales: u64,
    /// Products with an inventory record.
    #[arg(long, default_value_t = 1_000)]
    products: u64,
    /// Clients with a record (sales pick one of them at random).
    #[arg(long, default_value_t = 10_000)]
    clients: u64,
    /// Partitions of the sales topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Sales per second in the latency phase (repeat for several runs).
    #[arg(long = "rate", default_values_t = [10_000, 2_000])]
    rates: Vec<u64>,
    /// Length of the latency phase, seconds. A minute at 10,000 sales/s takes each sales
    /// partition past a log compaction (20 s did not, and hid what one did to latency).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Products in the memory run (0 = no memory run).
    #[arg(long, default_value_t = 0)]
    memory_products: u64,
    /// Clients in the memory run.
    #[arg(long, default_value_t = 0)]
    memory_clients: u64,
    /// The service binary (default: `sluice-analytics` next to this one).
    #[arg(long)]
    service: Option<PathBuf>,
    /// How often the latency phase asks MongoDB for the probes' documents, ms.
    #[arg(long, default_value_t = 5)]
    probe_poll_ms: u64,
}

const CATEGORIES: [&str; 6] = [
    "dairy",
    "bakery",
    "produce",
    "drinks",
    "frozen",
    "household",
];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];
/// Sales times: the backlog spreads over the hour before the benchmark's "now".
const NOW: &str = "2026-12-01T12:00:00Z";

/// One run's names: topics under a prefix, a database, a group.
struct Names {
    prefix: String,
    database: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        let stamp = chrono::Utc::now().format("%H%M%S%3f");
        Self {
            prefix: format!("bench-{tag}-{stamp}."),
            database: format!("bench_analytics_{tag}_{stamp}"),
        }
    }
    fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn inventory_json(p: u64) -> String {
    let buy = 100 + p * 37 % 900;
    let sell = buy + 10 + p * 13 % 300;
    format!(
        r#"{{"product_id":"P{p:06}","name":"Product {p}","category":"{}","buy_price":{},"sell_price":{},"min_margin_threshold":0.15,"quantity":{},"last_movement":"2026-11-{:02}T08:00:00Z","expiry_date":"2027-{:02}-01","batch_no":"B1"}}"#,
        CATEGORIES[(p % 6) as usize],
        money(buy),
        money(sell),
        10 + p % 90,
        1 + p % 28,
        1 + p % 12,
    )
}

fn client_json(c: u64) -> String {
    format!(
        r#"{{"client_id":"C{c:07}","name":"Client {c}","total_revenue_generated":{},"loyalty_tier":"{}"}}"#,
        money(c * 7 % 100_000),
        TIERS[(c % 4) as usize]
    )
}

/// A sale by `client` at `at_ms`, with 1..=5 lines of random products.
fn sale_json(
    rng: &mut fastrand::Rng,
    invoice: u64,
    client: &str,
    at_ms: i64,
    products: u64,
) -> String {
    let lines = rng.usize(1..=5);
    let mut items = String::with_capacity(64 * lines);
    for i in 0..lines {
        if i > 0 {
            items.push(',');
        }
        items.push_str(&format!(
            r#"{{"product_id":"P{:06}","quantity":{}}}"#,
            rng.u64(0..products),
            rng.u64(1..=5)
        ));
    }
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
    format!(
        r#"{{"invoice_id":"INV-{invoice:09}","client_id":"{client}","timestamp":"{}","total_amount":{},"items":[{items}]}}"#,
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        money(rng.u64(100..100_000)),
    )
}

fn now_ms() -> i64 {
    chrono::DateTime::parse_from_rfc3339(NOW)
        .map(|t| t.timestamp_millis())
        .unwrap_or_default()
}

struct Kafka {
    brokers: String,
    producer: FutureProducer,
}

impl Kafka {
    fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "60000")
            .create()?;
        Ok(Self {
            brokers: brokers.to_owned(),
            producer,
        })
    }

    async fn create_topics(&self, names: &Names, sales_partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let topics = [
            (names.topic("topic-raw-sales"), sales_partitions),
            (names.topic("topic-inventory-updates"), 2),
            (names.topic("topic-clients"), 1),
            (names.topic("topic-analytics-dead-letters"), 1),
        ];
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
            .collect();
        for r in admin.create_topics(&new, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// Sends `(topic, key, payload)` in chunks, each waiting for every acknowledgement, with a
    /// progress line on stderr every second.
    async fn send_all(
        &self,
        what: &str,
        n: u64,
        mut message: impl FnMut(u64) -> (String, String, String),
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut shown = Instant::now();
        let mut i = 0;
        while i < n {
            let chunk: Vec<_> = (i..n.min(i + 20_000)).map(&mut message).collect();
            let sends = chunk.iter().map(|(t, k, p)| {
                self.producer.send(
                    FutureRecord::to(t).key(k).payload(p),
                    Duration::from_secs(60),
                )
            });
            for r in join_all(sends).await {
                r.map_err(|(e, _)| anyhow::anyhow!("produce {what}: {e}"))?;
            }
            i += chunk.len() as u64;
            if shown.elapsed() >= Duration::from_secs(1) {
                eprintln!("   produced {i}/{n} {what}");
                shown = Instant::now();
            }
        }
        Ok(started.elapsed())
    }

    /// The ceiling: reads `n` messages of `topic` from the start, touching each payload.
    /// Returns the time to the first message (the group join) and to the last, and where the
    /// CPU of the machine and of `watch` went in between.
    fn raw_consume(
        &self,
        topic: &str,
        n: u64,
        watch: &[(String, Vec<u32>)],
    ) -> anyhow::Result<(Duration, Duration, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{topic}-raw"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .create()?;
        consumer.subscribe(&[topic])?;
        let started = Instant::now();
        let (mut count, mut bytes, mut joined) = (0u64, 0usize, Duration::ZERO);
        let mut first = CpuUse::now(watch);
        while count < n {
            if started.elapsed() > Duration::from_secs(900) {
                bail!("raw consume: {count}/{n} after 900 s");
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if count == 0 {
                        joined = started.elapsed();
                        first = CpuUse::now(watch);
                    }
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    count += 1;
                }
                Some(Err(e)) => eprintln!("   raw consume: {e}"),
                None => {}
            }
        }
        std::hint::black_box(bytes);
        let took = started.elapsed();
        Ok((joined, took, CpuUse::now(watch).since(&first)))
    }
}

/// CPU time a process has used (user and system, all its threads), seconds.
fn process_cpu_secs(pid: u32) -> Option<f64> {
    // Fields 14 and 15 of /proc/PID/stat, after the command name in parentheses, in clock
    // ticks (100 a second on Linux).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Processes whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// The servers the benchmark runs against, by command name, when they run on this machine.
const SERVERS: [(&str, &str); 2] = [("tansu", "tansu"), ("SecantusDB", "secantusd-rs")];

/// Where the machine's CPU went: its busy time and that of each process watched, seconds.
#[derive(Debug, Clone)]
struct CpuUse {
    at: Instant,
    busy: f64,
    processes: Vec<(String, f64)>,
}

impl CpuUse {
    /// The machine's busy time now (`/proc/stat`), and each of `processes`' (label, pids).
    fn now(processes: &[(String, Vec<u32>)]) -> Self {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .take(8)
                    .filter_map(|t| t.parse().ok())
                    .collect();
                let idle = ticks.get(3)? + ticks.get(4)?;
                Some((ticks.iter().sum::<f64>() - idle) / 100.0)
            })
            .unwrap_or(0.0);
        let processes = (processes.iter())
            .map(|(label, pids)| {
                let secs = pids.iter().filter_map(|&p| process_cpu_secs(p)).sum();
                (label.clone(), secs)
            })
            .collect();
        Self {
            at: Instant::now(),
            busy,
            processes,
        }
    }

    /// What was used since `before`: cores busy on average, and each process's CPU seconds.
    fn since(&self, before: &Self) -> String {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let mut out = format!(
            "{:.2} of {} cores busy over {wall:.1} s",
            (self.busy - before.busy) / wall,
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        );
        for ((label, now), (_, then)) in self.processes.iter().zip(&before.processes) {
            out.push_str(&format!("; {label} {:.2} s CPU", now - then));
        }
        out
    }
}

/// The servers of [`SERVERS`] found on this machine, with `more`.
fn watched(more: &[(&str, u32)]) -> Vec<(String, Vec<u32>)> {
    let mut all: Vec<(String, Vec<u32>)> = (more.iter())
        .map(|&(label, pid)| (label.to_owned(), vec![pid]))
        .collect();
    for (label, name) in SERVERS {
        let pids = pids_named(name);
        if !pids.is_empty() {
            all.push((label.to_owned(), pids));
        }
    }
    all
}

/// The service as a child process.
struct Service {
    child: Child,
    pid: u32,
    /// Its HTTP port (`/metrics`).
    port: u16,
    /// Reads the offsets its group committed to Kafka (it never joins the group).
    offsets: BaseConsumer,
    /// The sales topic's partitions.
    sales: TopicPartitionList,
}

impl Service {
    async fn start(args: &Args, names: &Names) -> anyhow::Result<Self> {
        // A port free a moment ago: the benchmark reads the service's /metrics.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let bin = match &args.service {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("bench binary has no directory")?
                .join("sluice-analytics"),
        };
        let log = std::fs::File::create(format!("/tmp/{}.log", names.database))?;
        let group = format!("{}analytics", names.prefix);
        let child = Command::new(&bin)
            .env("KAFKA_BROKERS", &args.brokers)
            .env("MONGODB_URL", &args.mongodb_url)
            .env("PORT", port.to_string())
            .env("SLUICE_ANALYTICS_HOST", "127.0.0.1")
            .env("SLUICE_ANALYTICS_DATABASE", &names.database)
            .env("SLUICE_ANALYTICS_GROUP_ID", &group)
            .env("SLUICE_ANALYTICS_TOPIC_PREFIX", &names.prefix)
            .env("SLUICE_ANALYTICS_NOW", NOW)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id().context("service exited at once")?;
        let offsets = ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut sales = TopicPartitionList::new();
        for p in 0..args.partitions {
            sales.add_partition(&names.topic("topic-raw-sales"), p);
        }
        Ok(Self {
            child,
            pid,
            port,
            offsets,
            sales,
        })
    }

    /// Resident set size, MiB.
    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU time the service has used (user and system, all its threads), seconds.
    fn cpu_secs(&self) -> f64 {
        process_cpu_secs(self.pid).unwrap_or(0.0)
    }

    /// Sales whose results the service has stored: the offsets its group committed to Kafka,
    /// which it commits only once a flush has written its results. (The offsets it keeps in
    /// MongoDB are written with its state, before the results.)
    fn sales_committed(&self) -> anyhow::Result<u64> {
        let committed = self
            .offsets
            .committed_offsets(self.sales.clone(), Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => u64::try_from(o).ok(),
                _ => None,
            })
            .sum())
    }

    /// Sales messages the service has applied so far (`analytics_messages_total`), if its
    /// /metrics answers.
    async fn applied_sales(&self, sales_topic: &str) -> Option<f64> {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await.ok()?;
        let topic = format!("topic=\"{sales_topic}\"");
        Some(
            text.lines()
                .filter(|l| l.starts_with("analytics_messages_total{") && l.contains(&topic))
                .filter(|l| l.contains("outcome=\"applied\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM: the service flushes and commits, then exits.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

/// How the service got through a backlog.
struct Done {
    peak_rss_mib: f64,
    /// When the service was first seen to have applied a sale (once it joined the group;
    /// its /metrics polled every 50 ms), as the raw loop's first message.
    consuming: Option<Duration>,
    /// When it was first seen to have applied every sale (its flushes still writing).
    applied_all: Option<Duration>,
    /// The service's CPU time from its first applied sale to every result stored, seconds.
    cpu_secs: f64,
    /// Where the machine's CPU went over that time.
    machine: Option<String>,
}

/// Waits until the service has stored the results of `n` sales; progress every 2 s.
async fn wait_done(
    service: &Service,
    sales_topic: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Done> {
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut peak: f64 = 0.0;
    let (mut consuming, mut applied_all, mut cpu_at_first) = (None, None, 0.0);
    let watch = watched(&[("sluice-analytics", service.pid)]);
    let mut machine_at_first = None;
    loop {
        if applied_all.is_none()
            && let Some(applied) = service.applied_sales(sales_topic).await
        {
            if consuming.is_none() && applied > 0.0 {
                consuming = Some(started.elapsed());
                cpu_at_first = service.cpu_secs();
                machine_at_first = Some(CpuUse::now(&watch));
            }
            if applied >= n as f64 {
                applied_all = Some(started.elapsed());
            }
        }
        let done = service.sales_committed()?;
        peak = peak.max(service.rss_mib());
        if done >= n {
            return Ok(Done {
                peak_rss_mib: peak,
                consuming,
                applied_all,
                cpu_secs: service.cpu_secs() - cpu_at_first,
                machine: (machine_at_first.as_ref()).map(|then| CpuUse::now(&watch).since(then)),
            });
        }
        if started.elapsed() > limit {
            bail!("service stored {done}/{n} sales after {limit:?}");
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "   service: results of {done}/{n} sales stored, RSS {:.0} MiB",
                service.rss_mib()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Probe client id → when it was handed to the producer.
type Probes = std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// Polls MongoDB every 5 ms for the probes' client documents; returns the latencies (ms) once
/// `expected` probes were seen or `stop` fires.
async fn watch_probes(
    db: Database,
    probes: Probes,
    expected: usize,
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<f64>> {
    let clients = db.collection::<Document>("clients");
    let mut latencies = Vec::with_capacity(expected);
    while latencies.len() < expected && !stop.is_cancelled() {
        tokio::time::sleep(poll).await;
        let ids: Vec<String> = probes
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        let mut cursor = clients
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"_id": 1})
            .await?;
        let seen = Instant::now();
        while let Some(d) = cursor.try_next().await? {
            let sent = d
                .get_str("_id")
                .ok()
                .and_then(|id| probes.lock().ok()?.remove(id));
            if let Some(t) = sent {
                latencies.push((seen - t).as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(latencies)
}

/// Phase 2: steady sales at `rate` with probes; returns the sorted latencies in ms and the
/// rate reached.
async fn latency(
    args: &Args,
    rate: u64,
    kafka: &Kafka,
    names: &Names,
    db: &Database,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let topic = names.topic("topic-raw-sales");
    let mut rng = fastrand::Rng::with_seed(rate);
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let total = per_tick * 100 * args.seconds;
    let probes = Probes::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let expected = usize::try_from(total.div_ceil(100)).unwrap_or(usize::MAX);
    let watcher = tokio::spawn(watch_probes(
        db.clone(),
        probes.clone(),
        expected,
        Duration::from_millis(args.probe_poll_ms),
        stop.clone(),
    ));
    let started = Instant::now();
    let mut next_tick = tokio::time::Instant::now();
    let mut sends = Vec::new();
    let base = now_ms();
    for i in 0..total {
        let probe = i.is_multiple_of(100);
        let client = if probe {
            format!("probe-{rate}-{i}")
        } else {
            format!("C{:07}", rng.u64(0..args.clients))
        };
        let json = sale_json(&mut rng, 10_000_000 + i, &client, base, args.products);
        let record = FutureRecord::to(&topic).key(&client).payload(&json);
        match kafka.producer.send_result(record) {
            Ok(f) => sends.push(f),
            Err((e, _)) => bail!("produce: {e}"),
        }
        if probe && let Ok(mut p) = probes.lock() {
            p.insert(client, Instant::now());
        }
        if (i + 1).is_multiple_of(per_tick) {
            next_tick += tick;
            tokio::time::sleep_until(next_tick).await;
        }
    }
    let produced = started.elapsed();
    for r in join_all(sends).await {
        r.map_err(|_| anyhow::anyhow!("a send was cancelled"))?
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            stop.cancel();
        }
    });
    let mut latencies = watcher.await??;
    timer.abort();
    if latencies.len() < expected {
        eprintln!(
            "   {} probes not visible after 120 s",
            expected - latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, total as f64 / produced.as_secs_f64()))
}

/// Inventory for `products`, records for `clients`, `sales` sales; returns the time taken.
async fn produce_backlog(
    kafka: &Kafka,
    names: &Names,
    products: u64,
    clients: u64,
    sales: u64,
    one_sale_per_client: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let inv = names.topic("topic-inventory-updates");
    kafka
        .send_all("inventory records", products, |p| {
            (inv.clone(), format!("P{p:06}"), inventory_json(p))
        })
        .await?;
    let cl = names.topic("topic-clients");
    kafka
        .send_all("client records", clients, |c| {
            (cl.clone(), format!("C{c:07}"), client_json(c))
        })
        .await?;
    let st = names.topic("topic-raw-sales");
    let mut rng = fastrand::Rng::with_seed(1);
    let start_ms = now_ms() - 3_600_000;
    let step = 3_600_000 / i64::try_from(sales.max(1)).unwrap_or(1).max(1);
    kafka
        .send_all("sales", sales, |i| {
            let client = if one_sale_per_client {
                format!("C{:07}", i % clients.max(1))
            } else {
                format!("C{:07}", rng.u64(0..clients.max(1)))
            };
            let at = start_ms + i64::try_from(i).unwrap_or(0) * step;
            let json = sale_json(&mut rng, i, &client, at, products);
            (st.clone(), client, json)
        })
        .await?;
    Ok(started.elapsed())
}

async fn drop_database(db: &Database) {
    if let Err(e) = db.drop().await {
        eprintln!("   could not drop {}: {e}", db.name());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = Kafka::new(&args.brokers)?;
    let mongo = mongodb::Client::with_uri_str(&args.mongodb_url).await?;

    println!(
        "== 1. backlog: {} sales (1-5 line items, 3 on average), {} products, {} clients, {} sales partitions",
        args.sales, args.products, args.clients, args.partitions
    );
    let names = Names::new("tput");
    kafka.create_topics(&names, args.partitions).await?;
    let took = produce_backlog(
        &kafka,
        &names,
        args.products,
        args.clients,
        args.sales,
        false,
    )
    .await?;
    println!("   produced in {:.1} s", took.as_secs_f64());
    let sales_topic = names.topic("topic-raw-sales");
    let watch = watched(&[("the loop", std::process::id())]);
    let (joined, raw, machine) =
        tokio::task::block_in_place(|| kafka.raw_consume(&sales_topic, args.sales, &watch))?;
    let raw_rate = args.sales as f64 / raw.as_secs_f64();
    let raw_sustained = args.sales as f64 / (raw - joined).as_secs_f64().max(1e-3);
    println!(
        "   ceiling, raw rdkafka consume loop: {:.1} s, {:.0} sales/s; of that the group join {:.1} s, then {:.0} sales/s",
        raw.as_secs_f64(),
        raw_rate,
        joined.as_secs_f64(),
        raw_sustained
    );
    println!("   the machine from its first message to its last: {machine}");
    let db = mongo.database(&names.database);
    let started = Instant::now();
    let service = Service::start(&args, &names).await?;
    let done = wait_done(
        &service,
        &sales_topic,
        args.sales,
        Duration::from_secs(1800),
    )
    .await?;
    let took = started.elapsed();
    let rate = args.sales as f64 / took.as_secs_f64();
    println!(
        "   sluice-analytics: {:.1} s, {:.0} sales/s = {:.0} % of the ceiling; RSS {:.1} MiB after, peak {:.1} MiB",
        took.as_secs_f64(),
        rate,
        100.0 * rate / raw_rate,
        service.rss_mib(),
        done.peak_rss_mib
    );
    if let Some(at) = done.consuming {
        // From its first applied sale to every result stored, as the raw loop's rate runs
        // from its first message to its last: the group join left out of both.
        let sustained = args.sales as f64 / (took - at).as_secs_f64().max(1e-3);
        println!(
            "   sluice-analytics: consuming {:.1} s after the start, then {:.1} s to every result stored: {:.0} sales/s = {:.1} % of the raw loop's {:.0}",
            at.as_secs_f64(),
            (took - at).as_secs_f64(),
            sustained,
            100.0 * sustained / raw_sustained,
            raw_sustained
        );
        if let Some(all) = done.applied_all {
            // The consumer alone: how fast it applies sales while flushes write behind it.
            let applying = args.sales as f64 / (all - at).as_secs_f64().max(1e-3);
            println!(
                "   sluice-analytics: every sale applied {:.1} s after the first: {:.0} sales/s = {:.1} % of the raw loop's (flushes writing meanwhile)",
                (all - at).as_secs_f64(),
                applying,
                100.0 * applying / raw_sustained,
            );
        }
        println!(
            "   sluice-analytics: CPU {:.2} s over those {:.1} s (all its threads): {:.2} µs per sale",
            done.cpu_secs,
            (took - at).as_secs_f64(),
            1e6 * done.cpu_secs / args.sales as f64,
        );
        if let Some(machine) = &done.machine {
            println!("   the machine over those seconds: {machine}");
        }
    }

    let mut produced = args.sales;
    for &rate in &args.rates {
        println!(
            "== 2. produce-to-visible latency at {rate} sales/s for {} s (every 100th sale a probe)",
            args.seconds
        );
        let (lat, reached) = latency(&args, rate, &kafka, &names, &db).await?;
        // The next rate starts with nothing left over from this one.
        produced += rate / 100 * 100 * args.seconds;
        wait_done(&service, &sales_topic, produced, Duration::from_secs(1800)).await?;
        println!(
            "   {} probes at {:.0} sales/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; RSS {:.1} MiB",
            lat.len(),
            reached,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            service.rss_mib()
        );
    }
    service.stop().await?;
    drop_database(&db).await;

    if args.memory_products > 0 || args.memory_clients > 0 {
        let (products, clients) = (args.memory_products.max(1), args.memory_clients.max(1));
        println!(
            "== 3. memory: {products} products, {clients} clients, each client with a record and one sale"
        );
        let names = Names::new("mem");
        kafka.create_topics(&names, args.partitions).await?;
        let took = produce_backlog(&kafka, &names, products, clients, clients, true).await?;
        println!("   produced in {:.1} s", took.as_secs_f64());
        let db = mongo.database(&names.database);
        let started = Instant::now();
        let service = Service::start(&args, &names).await?;
        let sales_topic = names.topic("topic-raw-sales");
        let peak = wait_done(&service, &sales_topic, clients, Duration::from_secs(3600))
            .await?
            .peak_rss_mib;
        println!(
            "   consumed in {:.1} s; RSS {:.1} MiB after, peak {:.1} MiB",
            started.elapsed().as_secs_f64(),
            service.rss_mib(),
            peak
        );
        service.stop().await?;
        drop_database(&db).await;
    }
    Ok(())
}
