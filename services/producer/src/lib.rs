//! sluice-producer: moves records from a source to a sink without losing any.
//!
//! `source → transform → sink`, one batch at a time: read a batch, scale its numeric fields,
//! send it and wait until the sink confirmed every record (or dead-lettered it with a reason),
//! then save the checkpoint. A crash re-sends at most the batch in flight; it never skips one.
//!
//! # Layout
//! - [`config`]: the command line (`sluice-producer run --source … --sink …`), every flag also
//!   an environment variable.
//! - [`source`]: MongoDB (by `_id`, resumable, watch mode), JSON Lines (by offset), synthetic
//!   (aggregator events or the retail scenario of stream analytics).
//! - [`transform`]: online standard / min-max scaling with JSON state.
//! - [`sink`]: RabbitMQ (confirms, retry, dead letters, breaker, reconnect), Redis stream, HTTP,
//!   Kafka.
//! - [`checkpoint`]: seed 000's checkpoint document, or a file.
//! - [`metrics`]: Prometheus metrics, served with `/health` while the run lasts.

pub mod checkpoint;
pub mod config;
mod deliver;
pub mod error;
pub mod metrics;
pub mod record;
pub mod sink;
pub mod source;
pub mod transform;
mod transient;

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mongodb::bson::Document;
use sluice_core::{health::Health, http::HttpServer, telemetry::Metrics};
use tokio_util::sync::CancellationToken;

pub use crate::error::{Error, Result};
use crate::{
    checkpoint::{Checkpoint, CheckpointStore, Status},
    config::{Progress, RunArgs, SinkKind, SourceKind},
    deliver::deliver,
    metrics::ProducerMetrics,
    sink::{
        DeadLetterFile, HttpSink, KafkaSink, RabbitSink, RedisSink, Sink, rabbitmq::RabbitConfig,
    },
    source::{JsonlSource, MongoSource, Source, SyntheticSource},
    transform::Scalers,
    transient::{read_batch, retrying},
};

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records covered by the checkpoint when the run started.
    pub resumed_at: u64,
    pub read: u64,
    pub sent: u64,
    pub dead_lettered: u64,
    /// True when a finite source was exhausted (checkpoint `complete`).
    pub complete: bool,
}

/// Runs the pipeline until the source is exhausted (or `shutdown`, in watch mode).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<Summary> {
    args.validate()?;
    let metrics = Metrics::new("producer")?;
    let pm = ProducerMetrics::new(&metrics)?;
    let (store, mongo) = checkpoint_store(&args).await?;
    if matches!(store, CheckpointStore::None) {
        tracing::warn!(
            "no --checkpoint-file: nothing is saved, so a restart sends every record again \
             from the first one"
        );
    }
    let saved = store.load().await?;
    let mut summary = Summary {
        resumed_at: saved.as_ref().map_or(0, |c| c.count),
        ..Summary::default()
    };
    if saved.as_ref().is_some_and(|c| c.status == Status::Complete) && !args.watch {
        tracing::info!(
            count = summary.resumed_at,
            "the checkpoint says this run is complete; nothing to do"
        );
        summary.complete = true;
        return Ok(summary);
    }
    let position = saved.as_ref().map(|c| &c.position);
    let mut source = match args.source {
        SourceKind::Mongo => {
            let collection = mongo
                .as_ref()
                .ok_or(Error::NotConnected)?
                .collection::<Document>(&args.mongo_collection);
            Source::Mongo(MongoSource::new(collection, position)?)
        }
        SourceKind::Jsonl => Source::Jsonl(
            JsonlSource::open(args.input.clone().unwrap_or_default(), position, args.watch).await?,
        ),
        SourceKind::Synthetic => Source::Synthetic(SyntheticSource::new(
            args.scenario,
            args.seed,
            args.total_events,
            args.duplicate_rate,
            position,
        )),
    };
    let mut scalers = Scalers::new(
        &args.scale_standard,
        &args.scale_minmax,
        saved.as_ref().and_then(|c| c.scaler.clone()),
    )?;
    let mut sink = connect_sink(&args, &pm, &shutdown).await?;

    let sink_ok = Arc::new(AtomicBool::new(true));
    let health = {
        let ok = sink_ok.clone();
        Health::new().with_probe(sink_name(args.sink), move || {
            let ok = ok.load(Ordering::Relaxed);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("the last health check failed".to_owned())
                }
            }
        })
    };
    let server = HttpServer::bind(&args.listen.to_string()).await?;
    let server_stop = CancellationToken::new();
    let serving =
        tokio::spawn(server.serve(health.router().merge(metrics.router()), server_stop.clone()));
    health.set_ready(true);

    let progress = Reporter::new(args.progress, source.remaining().await, summary.resumed_at);
    let mut count = summary.resumed_at;
    let health_every = Duration::from_millis(args.health_check_interval_ms);
    // The first check runs after the first batch, once the sink has connected.
    let mut next_health = Instant::now() + Duration::from_secs(1);
    // While a batch is being delivered, the next one is read: the source's round trip overlaps
    // the sink's. Its position is taken before the read, so the checkpoint never covers it early.
    let mut next = match read_batch(&mut source, args.batch_size, &shutdown).await {
        Err(Error::Stopped) => Vec::new(),
        read => read?,
    };
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if Instant::now() >= next_health {
            next_health = Instant::now() + health_every;
            let ok = sink
                .health_check()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "sink health check failed"))
                .is_ok();
            sink_ok.store(ok, Ordering::Relaxed);
        }
        let mut batch = std::mem::take(&mut next);
        if batch.is_empty() {
            if args.watch {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(args.poll_interval_ms)) => {}
                    () = shutdown.cancelled() => break,
                }
                next = match read_batch(&mut source, args.batch_size, &shutdown).await {
                    Err(Error::Stopped) => break,
                    read => read?,
                };
                continue;
            }
            let done = Checkpoint {
                position: source.position(),
                count,
                status: Status::Complete,
                scaler: scalers.state(),
            };
            match retrying("saving the checkpoint", &shutdown, || store.save(&done)).await {
                Err(Error::Stopped) => break,
                saved => saved?,
            }
            summary.complete = true;
            break;
        }
        let position = source.position();
        pm.read.inc_by(batch.len() as u64);
        summary.read += batch.len() as u64;
        scalers.apply(&mut batch);
        let (delivered, prefetched) = tokio::join!(
            deliver(&mut sink, &batch, &pm, &shutdown),
            read_batch(&mut source, args.batch_size, &shutdown)
        );
        let Some(delivered) = delivered? else {
            tracing::info!("stopping with a batch unconfirmed; it is sent again on the next run");
            break;
        };
        summary.sent += delivered.sent;
        summary.dead_lettered += delivered.dead_lettered;
        count += batch.len() as u64;
        let checkpoint = Checkpoint {
            position,
            count,
            status: Status::InProgress,
            scaler: scalers.state(),
        };
        match retrying("saving the checkpoint", &shutdown, || {
            store.save(&checkpoint)
        })
        .await
        {
            Err(Error::Stopped) => break,
            saved => saved?,
        }
        pm.checkpoint_count
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        progress.advance(batch.len() as u64, count);
        next = match prefetched {
            Err(Error::Stopped) => break,
            read => read?,
        };
    }
    progress.finish(count);
    if let Sink::Rabbit(rabbit) = &sink
        && let Some([p50, p95, p99]) = rabbit.confirm_latency_percentiles()
    {
        tracing::info!(
            p50_ms = p50.as_secs_f64() * 1e3,
            p95_ms = p95.as_secs_f64() * 1e3,
            p99_ms = p99.as_secs_f64() * 1e3,
            batch = args.batch_size,
            "batch confirm latency"
        );
    }
    tracing::info!(
        read = summary.read,
        sent = summary.sent,
        dead_lettered = summary.dead_lettered,
        complete = summary.complete,
        "run finished"
    );
    server_stop.cancel();
    let _ = serving.await;
    Ok(summary)
}

async fn checkpoint_store(args: &RunArgs) -> Result<(CheckpointStore, Option<mongodb::Database>)> {
    if args.source == SourceKind::Mongo {
        let client = mongodb::Client::with_uri_str(&args.mongo_url)
            .await
            .map_err(|e| Error::Config {
                setting: "--mongo-url / SLUICE_PRODUCER_MONGO_URL",
                reason: e.to_string(),
            })?;
        let db = client.database(&args.mongo_database);
        let store = CheckpointStore::Mongo {
            collection: db.collection(&args.checkpoint_collection),
            id: args.checkpoint_id.clone(),
        };
        return Ok((store, Some(db)));
    }
    Ok((
        args.checkpoint_file
            .clone()
            .map_or(CheckpointStore::None, CheckpointStore::File),
        None,
    ))
}

async fn connect_sink(
    args: &RunArgs,
    pm: &ProducerMetrics,
    shutdown: &CancellationToken,
) -> Result<Sink> {
    let dead = DeadLetterFile::new(args.dead_letter_file.clone());
    Ok(match args.sink {
        SinkKind::Rabbitmq => Sink::Rabbit(Box::new(RabbitSink::new(
            RabbitConfig {
                url: args.amqp_url.clone(),
                exchange: args.exchange.clone(),
                queue: args.queue.clone(),
                routing_key: args.routing_key.clone(),
                confirm_timeout: Duration::from_millis(args.confirm_timeout_ms),
                max_retries: args.max_retries,
                max_message_bytes: args.max_message_bytes,
            },
            pm.clone(),
            shutdown.clone(),
        ))),
        SinkKind::Redis => {
            Sink::Redis(RedisSink::connect(&args.redis_url, &args.stream_key, dead).await?)
        }
        SinkKind::Http => Sink::Http(HttpSink::new(&args.http_url, dead, shutdown.clone())?),
        SinkKind::Kafka => Sink::Kafka(KafkaSink::new(
            &args.kafka_brokers,
            &args.kafka_topic_prefix,
            &args.kafka_topic,
            args.kafka_key_field.clone(),
            args.max_message_bytes,
            dead,
            shutdown.clone(),
        )?),
    })
}

fn sink_name(kind: SinkKind) -> &'static str {
    match kind {
        SinkKind::Rabbitmq => "rabbitmq",
        SinkKind::Redis => "redis",
        SinkKind::Http => "aggregator",
        SinkKind::Kafka => "kafka",
    }
}

/// A progress bar with rate and ETA on a terminal, JSON log lines otherwise.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: std::sync::Mutex<Instant>,
    start_count: u64,
}

impl Reporter {
    fn new(mode: Progress, remaining: Option<u64>, start_count: u64) -> Self {
        let draw = match mode {
            Progress::Always => true,
            Progress::Never => false,
            Progress::Auto => remaining.is_some() && std::io::stderr().is_terminal(),
        };
        let bar = draw.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                remaining,
                indicatif::ProgressDrawTarget::stderr(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{wide_bar} {human_pos}/{human_len} {per_sec:0} ETA {eta}", // :0 = whole events/s
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: std::sync::Mutex::new(Instant::now()),
            start_count,
        }
    }

    fn advance(&self, n: u64, count: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            let rate =
                (count - self.start_count) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(records = count, rate_per_sec = rate.round(), "progress");
        }
    }

    fn finish(&self, count: u64) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        tracing::info!(
            records = count,
            elapsed_secs = self.started.elapsed().as_secs_f64(),
            "progress"
        );
    }
}
