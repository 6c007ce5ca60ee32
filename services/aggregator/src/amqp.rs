//! Optional RabbitMQ ingress: consumes a durable queue and writes straight to Postgres.
//!
//! Deliveries that are ready together are written in one transaction (a round of up to
//! `round_events` events, as the stream workers do); should that round be refused, its
//! deliveries are written one by one so only the bad one is dead-lettered.
//!
//! A delivery is acknowledged only after its events are committed, so a crash redelivers it;
//! its id (`amqp:<message-id>`, or a hash of the body when the publisher set none) goes to
//! `consumed_entries` with the events, so a redelivery is not counted twice. At most `prefetch`
//! deliveries are unacknowledged. A message that is not a valid event or batch is published to
//! `<queue>.dead` with the reason in the `x-sluice-reason` header, then acknowledged: it never
//! blocks the queue.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt as _, StreamExt};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use sluice_core::event::{Limits, parse_body};
use sluice_resilience::{Backoff, Jitter};
use tokio_util::sync::CancellationToken;

use crate::{
    Result,
    error::WriteFailure,
    metrics::AggregatorMetrics,
    store::{QueuedBatch, Store},
};

/// Statement failures (not outages) of one delivery before it is dead-lettered; see
/// [`WriteFailure`].
const STATEMENT_ATTEMPTS: u32 = 3;

/// Settings of the ingress.
#[derive(Debug, Clone)]
pub struct AmqpIngress {
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
    pub store: Arc<Store>,
    pub metrics: AggregatorMetrics,
    pub shard: i32,
    pub max_batch_events: usize,
    /// Most events written in one transaction (`SLUICE_AGGREGATOR_ROUND_EVENTS`).
    pub round_events: usize,
}

impl AmqpIngress {
    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Consumes until `shutdown`, reconnecting with capped jittered backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10))
            .with_jitter(Jitter::Full)
            .delays();
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown).await {
                Ok(()) => break,
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %err, ?delay, "AMQP ingress failed; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!("AMQP ingress stopped");
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let dead = conn.create_channel().await?;
        dead.confirm_select(ConfirmSelectOptions::default()).await?;
        for q in [self.queue.clone(), self.dead_letter_queue()] {
            declare_if_missing(&conn, &channel, &q).await?;
        }
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "sluice-aggregator".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.queue, prefetch = self.prefetch, "AMQP ingress consuming");
        loop {
            let delivery = tokio::select! {
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Err(crate::Error::AmqpClosed),
                },
                () = shutdown.cancelled() => {
                    let _ = conn.close(200, "shutting down".into()).await;
                    return Ok(());
                }
            };
            // What else has arrived joins the round, up to `round_events` events.
            let mut round = Round::default();
            round.add(self.parse(delivery, &dead).await?);
            while round.events < self.round_events {
                let Some(next) = deliveries.next().now_or_never() else {
                    break;
                };
                let delivery = next.ok_or(crate::Error::AmqpClosed)??;
                round.add(self.parse(delivery, &dead).await?);
            }
            self.store_round(round, &dead, shutdown).await?;
        }
    }

    /// The delivery's events, or `None` once an unreadable delivery is dead-lettered and
    /// acknowledged.
    async fn parse(
        &self,
        delivery: Delivery,
        dead: &Channel,
    ) -> Result<Option<(Delivery, QueuedBatch)>> {
        // The HTTP payload-size limit does not apply to AMQP messages (docs/operations.md).
        let limits = Limits {
            max_events: self.max_batch_events,
            max_payload_bytes: usize::MAX,
        };
        match parse_body(&delivery.data, &limits) {
            Ok(events) => {
                self.metrics.accepted.inc_by(events.len() as u64);
                let batch = QueuedBatch {
                    entry_id: entry_id(&delivery),
                    events,
                };
                Ok(Some((delivery, batch)))
            }
            Err(err) => {
                self.dead_letter(&delivery, dead, &err.to_string()).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(None)
            }
        }
    }

    /// Writes a round in one transaction and acknowledges it; if Postgres refuses it (or
    /// keeps failing the statement), its deliveries one by one.
    async fn store_round(
        &self,
        round: Round,
        dead: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let Round {
            deliveries,
            batches,
            ..
        } = round;
        match (deliveries.as_slice(), batches.as_slice()) {
            ([], _) => return Ok(()),
            ([delivery], [batch]) => return self.store_one(delivery, batch, dead, shutdown).await,
            _ => {}
        }
        match self.write(&batches, shutdown).await {
            Written::Yes => {
                for delivery in &deliveries {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Ok(())
            }
            Written::Refused(err) => {
                tracing::warn!(error = %err, deliveries = deliveries.len(), "Postgres refused a round of AMQP deliveries; storing them one by one");
                self.metrics.rounds_split.inc();
                for (delivery, batch) in deliveries.iter().zip(&batches) {
                    self.store_one(delivery, batch, dead, shutdown).await?;
                }
                Ok(())
            }
            // Not acknowledged: the broker redelivers them.
            Written::Stopped => Ok(()),
        }
    }

    /// Writes one delivery, dead-letters it if Postgres refuses it, and acknowledges it.
    async fn store_one(
        &self,
        delivery: &Delivery,
        batch: &QueuedBatch,
        dead: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        match self.write(std::slice::from_ref(batch), shutdown).await {
            Written::Yes => {}
            Written::Refused(err) => self.dead_letter(delivery, dead, &err.reason()).await?,
            // Not acknowledged: the broker redelivers it.
            Written::Stopped => return Ok(()),
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Writes `batches` in one transaction: outages are retried until shutdown, statement
    /// failures [`STATEMENT_ATTEMPTS`] times, refused data not at all.
    async fn write(&self, batches: &[QueuedBatch], shutdown: &CancellationToken) -> Written {
        let mut backoff =
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)).delays();
        let mut statement_failures = 0;
        loop {
            let err = match self.store.write(self.shard, batches).await {
                Ok(outcome) => {
                    self.metrics.received.inc_by(outcome.received);
                    self.metrics.unique.inc_by(outcome.unique);
                    self.metrics.duplicates.inc_by(outcome.duplicates);
                    self.metrics.batch_size.observe(outcome.received as f64);
                    return Written::Yes;
                }
                Err(err) => err,
            };
            let give_up = match err.write_failure() {
                WriteFailure::Refused => true,
                WriteFailure::Statement => {
                    statement_failures += 1;
                    statement_failures >= STATEMENT_ATTEMPTS
                }
                WriteFailure::Outage => false,
            };
            if give_up {
                return Written::Refused(err);
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(error = %err, ?delay, "storing AMQP deliveries failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Written::Stopped,
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, dead: &Channel, reason: &str) -> Result<()> {
        tracing::warn!(%reason, "AMQP message dead-lettered");
        let mut headers = FieldTable::default();
        headers.insert(
            "x-sluice-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2);
        dead.basic_publish(
            "".into(),
            self.dead_letter_queue().as_str().into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?
        .await?;
        self.metrics.dead_lettered.inc();
        Ok(())
    }
}

/// Deliveries written together, and their batches (apart, so the store takes the batches as
/// they are).
#[derive(Default)]
struct Round {
    deliveries: Vec<Delivery>,
    batches: Vec<QueuedBatch>,
    events: usize,
}

impl Round {
    fn add(&mut self, parsed: Option<(Delivery, QueuedBatch)>) {
        if let Some((delivery, batch)) = parsed {
            self.events += batch.events.len();
            self.deliveries.push(delivery);
            self.batches.push(batch);
        }
    }
}

/// How a write of AMQP deliveries ended.
enum Written {
    Yes,
    /// Refused, or the statement kept failing: the last error.
    Refused(crate::Error),
    /// Shutdown came during an outage.
    Stopped,
}

/// Uses the queue as it is when it exists (the producer declares its queues as quorum queues
/// with a dead-letter exchange; redeclaring with other arguments would fail), else declares a
/// durable quorum queue.
async fn declare_if_missing(conn: &Connection, channel: &Channel, queue: &str) -> Result<()> {
    // A failed passive declare closes its channel, so it gets one of its own.
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "probe done".into()).await;
        return Ok(());
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel.queue_declare(queue.into(), durable, args).await?;
    Ok(())
}

/// `amqp:<message id>`, or a stable hash of the body (FNV-1a) when there is no message id.
fn entry_id(delivery: &Delivery) -> String {
    if let Some(id) = delivery.properties.message_id() {
        return format!("amqp:{id}");
    }
    let hash = delivery
        .data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("amqp:fnv:{hash:016x}")
}
