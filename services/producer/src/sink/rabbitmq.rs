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

#[cfg(test)]
mod tests;
mod topology;

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sluice_resilience::{Backoff, BreakerConfig, CircuitBreaker, Jitter, State};
use tokio_util::sync::CancellationToken;

use super::{Delivered, Split, serialise};
use crate::{Error, Result, metrics::ProducerMetrics, record::Record};

/// The longest AMQP short string (message id, routing key), in bytes.
const SHORT_STRING_MAX: usize = 255;

/// Every publish is mandatory: a message no queue takes comes back (basic.return) instead of
/// being confirmed and dropped.
const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

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
    /// Ends the waits (reconnect, breaker, nack retries): a stop during an outage is prompt.
    shutdown: CancellationToken,
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
    pub fn new(
        config: RabbitConfig,
        metrics: ProducerMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            batch_latencies: Vec::new(),
            link: None,
            breaker: CircuitBreaker::new("rabbitmq-publish", BreakerConfig::broker()),
            metrics,
            reconnect: reconnect_backoff(),
            shutdown,
        }
    }

    /// Waits `delay`, or fails with [`Error::Stopped`] if the run is stopped first.
    async fn pause(&self, delay: Duration) -> Result<()> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.shutdown.cancelled() => Err(Error::Stopped),
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
            Err(err) if err.is_permanent() => Err(err),
            Err(err) => {
                let delay = self.reconnect.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(error = %err, ?delay, "connecting to RabbitMQ failed");
                self.pause(delay).await?;
                Err(err)
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, Channel)> {
        let conn = Connection::connect(&self.config.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let (dlx, dlq) = self.dead_letter_names();
        topology::declare(&conn, &ch, &self.config, &dlx, &dlq).await?;
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
                self.pause(wait.min(Duration::from_secs(5))).await?;
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
        let (ok, mut poison) = serialise(records, self.config.max_message_bytes);
        let (ok, unfit) = self.fit_short_strings(ok);
        poison.extend(unfit);
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
                if let Err(stopped) = self.pause(delay).await {
                    self.metrics.retry_queue_size.set(0);
                    return Err(stopped);
                }
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

    /// AMQP carries the message id and the routing key as short strings of at most 255 bytes;
    /// lapin cannot encode a longer one (it asserts in debug builds and corrupts the frame in
    /// release ones, and the broker then closes the connection for every retry). Such records
    /// are refused here, with the reason.
    fn fit_short_strings<'a>(&self, records: Vec<(&'a Record, Vec<u8>)>) -> Split<'a> {
        let (mut fit, mut unfit) = (Vec::with_capacity(records.len()), Vec::new());
        for (record, bytes) in records {
            let key = record.topic.as_deref().unwrap_or(&self.config.routing_key);
            if record.id.len() > SHORT_STRING_MAX {
                let reason = format!(
                    "its message id is {} bytes, over AMQP's {SHORT_STRING_MAX}-byte limit",
                    record.id.len()
                );
                unfit.push((record, reason));
            } else if key.len() > SHORT_STRING_MAX {
                let reason = format!(
                    "its routing key (topic) is {} bytes, over AMQP's {SHORT_STRING_MAX}-byte limit",
                    key.len()
                );
                unfit.push((record, reason));
            } else {
                fit.push((record, bytes));
            }
        }
        (fit, unfit)
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
                    MANDATORY,
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
        let (mut nacked, mut returned) = (Vec::new(), None);
        for ((record, bytes), confirm) in records.iter().zip(confirms) {
            let remaining = self
                .config
                .confirm_timeout
                .saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                // Returned as unroutable, then acked: the broker holds it nowhere.
                Ok(Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r)))) => {
                    returned.get_or_insert((record.id.clone(), r.reply_code, r.reply_text));
                }
                Ok(Ok(Confirmation::Nack(None))) => nacked.push((*record, bytes.clone())),
                Ok(Ok(Confirmation::NotRequested)) => {
                    self.drop_link();
                    return Err(Error::NotConfirmed(record.id.clone()));
                }
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
        if let Some((id, code, text)) = returned {
            // The topology was changed under us (queue deleted or unbound): reconnecting
            // declares it again, and the batch is sent again.
            self.drop_link();
            return Err(Error::Unroutable {
                exchange: self.config.exchange.clone(),
                id,
                reason: format!("{code} {text}"),
            });
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
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if record.id.len() <= SHORT_STRING_MAX {
            properties = properties.with_message_id(ShortString::from(record.id.as_str()));
        } else {
            // Too long for a message id: the id travels whole in a header instead of cut.
            headers.insert(
                "x-sluice-record-id".into(),
                AMQPValue::LongString(record.id.as_str().into()),
            );
        }
        let properties = properties.with_headers(headers);
        let body: Vec<u8> = if bytes.is_empty() {
            match &record.body {
                Ok(v) => serde_json::to_vec(v).unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        } else {
            bytes.to_vec()
        };
        let confirmation = channel
            .basic_publish(dlx.as_str().into(), "".into(), MANDATORY, &body, properties)
            .await?
            .await?;
        if !matches!(confirmation, Confirmation::Ack(None)) {
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
