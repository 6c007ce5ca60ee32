//! Optional RabbitMQ ingress: consumes a durable queue and writes straight to Postgres.
//!
//! A delivery is acknowledged only after its events are committed, so a crash redelivers it;
//! its id (`amqp:<message-id>`, or a hash of the body when the publisher set none) goes to
//! `consumed_entries` with the events, so a redelivery is not counted twice. At most `prefetch`
//! deliveries are unacknowledged. A message that is not a valid event or batch is published to
//! `<queue>.dead` with the reason in the `x-sluice-reason` header, then acknowledged: it never
//! blocks the queue.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
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
            self.handle(&delivery, &dead, shutdown).await?;
        }
    }

    async fn handle(
        &self,
        delivery: &Delivery,
        dead: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        // The HTTP payload-size limit does not apply to AMQP messages (docs/operations.md).
        let limits = Limits {
            max_events: self.max_batch_events,
            max_payload_bytes: usize::MAX,
        };
        let events = parse_body(&delivery.data, &limits).map_err(|e| e.to_string());
        let events = match events {
            Ok(events) => events,
            Err(reason) => {
                self.dead_letter(delivery, dead, &reason).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
        };
        let batch = QueuedBatch {
            entry_id: entry_id(delivery),
            events,
        };
        self.metrics.accepted.inc_by(batch.events.len() as u64);
        let mut backoff =
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)).delays();
        let mut statement_failures = 0;
        loop {
            let err = match self
                .store
                .write(self.shard, std::slice::from_ref(&batch))
                .await
            {
                Ok(outcome) => {
                    self.metrics.received.inc_by(outcome.received);
                    self.metrics.unique.inc_by(outcome.unique);
                    self.metrics.duplicates.inc_by(outcome.duplicates);
                    break;
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
                self.dead_letter(delivery, dead, &err.reason()).await?;
                break;
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(error = %err, ?delay, "storing an AMQP delivery failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Not acknowledged: the broker redelivers it.
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
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
