//! RabbitMQ, with everything seed 001 asked for and the dead-letter queue it left for later.
//!
//! - Topology, declared by the producer: a durable topic exchange; a durable quorum queue bound
//!   to it with `#`; a fanout dead-letter exchange `<exchange>.dlx` and queue `<queue>.dead`.
//! - Every batch is published with publisher confirms and waited for (bounded by the confirm
//!   timeout). Records the broker nacks are retried with exponential backoff and full jitter, at
//!   most `max_retries` times, then dead-lettered with the reason in `x-sluice-reason`. Records
//!   that cannot be serialised or are too large are dead-lettered at once.
//! - Confirms that time out, and lost connections, are not the record's fault: the batch fails,
//!   the checkpoint does not move, and the pipeline sends it again after reconnecting with
//!   capped, jittered backoff. A broker that blocks publishers (flow control, memory alarm)
//!   therefore stops the source too: at most one batch is ever in memory.
//! - A circuit breaker (broker preset) guards publishing; an exchange health check runs
//!   periodically; metrics as in [`crate::metrics`].

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use sluice_resilience::{Backoff, BreakerConfig, CircuitBreaker, Jitter, State};

use super::{Delivered, serialise};
use crate::{Error, Result, metrics::ProducerMetrics, record::Record};

/// Settings of the RabbitMQ sink.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub url: String,
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub confirm_timeout: Duration,
    pub max_retries: u32,
    pub max_message_bytes: usize,
}

pub struct RabbitSink {
    config: RabbitConfig,
    /// Publish-to-last-confirm time of each batch (the first 100,000), for the end-of-run report.
    batch_latencies: Vec<Duration>,
    link: Option<(Connection, Channel)>,
    breaker: CircuitBreaker,
    metrics: ProducerMetrics,
    reconnect: sluice_resilience::backoff::Delays,
}

impl std::fmt::Debug for RabbitSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSink")
            .field("exchange", &self.config.exchange)
            .field("queue", &self.config.queue)
            .finish()
    }
}

fn reconnect_backoff() -> sluice_resilience::backoff::Delays {
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(15))
        .with_jitter(Jitter::Full)
        .delays()
}

impl RabbitSink {
    pub fn new(config: RabbitConfig, metrics: ProducerMetrics) -> Self {
        Self {
            config,
            batch_latencies: Vec::new(),
            link: None,
            breaker: CircuitBreaker::new("rabbitmq-publish", BreakerConfig::broker()),
            metrics,
            reconnect: reconnect_backoff(),
        }
    }

    /// The dead-letter exchange and queue names.
    pub fn dead_letter_names(&self) -> (String, String) {
        (
            format!("{}.dlx", self.config.exchange),
            format!("{}.dead", self.config.queue),
        )
    }

    /// A connected channel with the topology declared and confirms on, connecting if needed.
    /// After a failure it waits the next capped, jittered backoff delay before trying again.
    async fn channel(&mut self) -> Result<Channel> {
        if let Some((conn, ch)) = &self.link {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
            self.link = None;
            self.metrics.connection_state.set(0);
        }
        match self.connect().await {
            Ok((conn, ch)) => {
                self.reconnect = reconnect_backoff();
                self.metrics.connection_state.set(1);
                self.link = Some((conn, ch.clone()));
                tracing::info!(exchange = %self.config.exchange, queue = %self.config.queue, "connected to RabbitMQ");
                Ok(ch)
            }
            Err(err) => {
                let delay = self.reconnect.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(error = %err, ?delay, "connecting to RabbitMQ failed");
                tokio::time::sleep(delay).await;
                Err(err)
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, Channel)> {
        let c = &self.config;
        let conn = Connection::connect(&c.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let (dlx, dlq) = self.dead_letter_names();
        ch.exchange_declare(
            c.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let mut main_args = args.clone();
        main_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        // A queue that exists already (declared by an operator or a consumer such as the
        // aggregator's ingress) is used as it is: redeclaring it with other arguments would fail.
        let probe = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exists = probe
            .queue_declare(c.queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        if exists {
            let _ = probe.close(200, "probe done".into()).await;
        } else {
            ch.queue_declare(c.queue.as_str().into(), durable_queue, main_args)
                .await?;
        }
        ch.queue_bind(
            c.queue.as_str().into(),
            c.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(dlq.as_str().into(), durable_queue, args)
            .await?;
        ch.queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((conn, ch))
    }

    fn drop_link(&mut self) {
        self.link = None;
        self.metrics.connection_state.set(0);
    }

    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                self.metrics.circuit_breaker_open.set(1);
                let wait = rejected.retry_after().unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                return Err(Error::BreakerOpen(rejected.to_string()));
            }
        };
        let outcome = self.publish_batch(records).await;
        match &outcome {
            Ok(_) => permit.success(),
            Err(_) => permit.failure(),
        }
        self.metrics
            .circuit_breaker_open
            .set(i64::from(self.breaker.state() == State::Open));
        outcome
    }

    async fn publish_batch(&mut self, records: &[Record]) -> Result<Delivered> {
        let channel = self.channel().await?;
        let (ok, poison) = serialise(records, self.config.max_message_bytes);
        let mut dead_lettered = 0;
        for (record, reason) in &poison {
            self.dead_letter(&channel, record, &[], reason).await?;
            dead_lettered += 1;
        }
        let mut pending: Vec<(&Record, Vec<u8>)> = ok;
        let mut backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
            .with_jitter(Jitter::Full)
            .delays();
        let mut sent = 0;
        for attempt in 0..=self.config.max_retries {
            let nacked = match self.publish_and_confirm(&channel, &pending).await {
                Ok(nacked) => nacked,
                Err(err) => {
                    self.metrics.retry_queue_size.set(0);
                    return Err(err);
                }
            };
            sent += (pending.len() - nacked.len()) as u64;
            pending = nacked;
            if pending.is_empty() {
                break;
            }
            self.metrics
                .retry_queue_size
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
            if attempt < self.config.max_retries {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    nacked = pending.len(),
                    attempt,
                    ?delay,
                    "broker refused records; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
        self.metrics.retry_queue_size.set(0);
        for (record, bytes) in &pending {
            let reason = format!(
                "refused by the broker {} times",
                self.config.max_retries + 1
            );
            self.dead_letter(&channel, record, bytes, &reason).await?;
            dead_lettered += 1;
        }
        Ok(Delivered {
            sent,
            dead_lettered,
        })
    }

    /// Publishes every record, then waits for each confirm. Returns the nacked ones; a timeout
    /// or a channel error fails the whole batch (the connection is dropped and rebuilt).
    async fn publish_and_confirm<'a>(
        &mut self,
        channel: &Channel,
        records: &[(&'a Record, Vec<u8>)],
    ) -> Result<Vec<(&'a Record, Vec<u8>)>> {
        let started = Instant::now();
        let mut confirms = Vec::with_capacity(records.len());
        for (record, bytes) in records {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"))
                .with_message_id(ShortString::from(record.id.as_str()));
            let routing_key = record.topic.as_deref().unwrap_or(&self.config.routing_key);
            let publish = channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    bytes,
                    properties,
                )
                .await;
            match publish {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => {
                    self.drop_link();
                    return Err(err.into());
                }
            }
        }
        let mut nacked = Vec::new();
        for ((record, bytes), confirm) in records.iter().zip(confirms) {
            let remaining = self
                .config
                .confirm_timeout
                .saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => {}
                Ok(Ok(Confirmation::Nack(_))) => nacked.push((*record, bytes.clone())),
                Ok(Ok(Confirmation::NotRequested)) => {}
                Ok(Err(err)) => {
                    self.drop_link();
                    return Err(err.into());
                }
                Err(_) => {
                    self.metrics.confirm_timeouts.inc();
                    self.drop_link();
                    return Err(Error::ConfirmTimeout(self.config.confirm_timeout));
                }
            }
        }
        let latency = started.elapsed();
        self.metrics.confirm_latency.observe(latency.as_secs_f64());
        if self.batch_latencies.len() < 100_000 {
            self.batch_latencies.push(latency);
        }
        Ok(nacked)
    }

    async fn dead_letter(
        &mut self,
        channel: &Channel,
        record: &Record,
        bytes: &[u8],
        reason: &str,
    ) -> Result<()> {
        let (dlx, _) = self.dead_letter_names();
        let mut headers = FieldTable::default();
        headers.insert(
            "x-sluice-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(record.id.as_str()))
            .with_headers(headers);
        let body: Vec<u8> = if bytes.is_empty() {
            match &record.body {
                Ok(v) => serde_json::to_vec(v).unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        } else {
            bytes.to_vec()
        };
        let confirmation = channel
            .basic_publish(
                dlx.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        if !confirmation.is_ack() {
            return Err(Error::DeadLetter(format!(
                "dead letter of {} was not confirmed",
                record.id
            )));
        }
        tracing::warn!(id = %record.id, %reason, "record dead-lettered");
        Ok(())
    }

    /// Median, 95th and 99th percentile of the batch confirm latency so far.
    pub fn confirm_latency_percentiles(&self) -> Option<[Duration; 3]> {
        let mut sorted = self.batch_latencies.clone();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort();
        let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        Some([at(0.5), at(0.95), at(0.99)])
    }

    /// Passive declare of the exchange on a fresh channel.
    pub async fn health_check(&mut self) -> Result<()> {
        let outcome = async {
            let Some((conn, _)) = &self.link else {
                return Err(Error::NotConnected);
            };
            let ch = conn.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            ch.exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await?;
            let _ = ch.close(200, "health check done".into()).await;
            Ok(())
        }
        .await;
        if outcome.is_err() {
            self.metrics.health_check_failures.inc();
        }
        outcome
    }
}
