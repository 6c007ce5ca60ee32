//! The Kafka side: a consumer in a group with manual offsets (nothing is committed or stored
//! automatically), rebalance events handed to the pipeline, and the dead-letter producer.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use prometheus::IntCounterVec;

use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaRespErr,
};

use sluice_core::wire::TRACE_HEADER;

use crate::{Config, Error, Result};

/// The trace id the writer of `msg` put in its trace header, if any (and if it is text).
pub(crate) fn trace_id<'m>(msg: &'m BorrowedMessage<'_>) -> Option<&'m str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == TRACE_HEADER)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// A partition assignment change, seen by the pipeline before its next message or flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Collects rebalance events (the callback must not block, so it only records them), counts
/// them, and starts each assigned partition at MongoDB's offset.
#[derive(Debug)]
pub(crate) struct GroupContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// `topic|partition` → MongoDB's stored offset, refreshed by every flush.
    stored: Mutex<HashMap<String, i64>>,
    /// `analytics_rebalances_total`, by event.
    rebalances: IntCounterVec,
}

impl GroupContext {
    pub(crate) fn new(rebalances: IntCounterVec) -> Self {
        Self {
            events: Mutex::default(),
            stored: Mutex::default(),
            rebalances,
        }
    }

    /// Replaces the known stored offsets.
    pub(crate) fn set_stored_offsets(&self, offsets: &HashMap<String, i64>) {
        if let Ok(mut stored) = self.stored.lock() {
            stored.clone_from(offsets);
        }
    }

    /// The events since the last call, oldest first.
    pub(crate) fn take_events(&self) -> Vec<RebalanceEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    /// librdkafka's own log lines, into the service's JSON logs.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {log_message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }
}

impl ConsumerContext for GroupContext {
    /// The default rebalance, except that an assignment starts every partition at the offset
    /// MongoDB holds (offset 0 for a partition never stored), not at Kafka's committed one:
    /// MongoDB's offsets are the truth, Kafka's commit only follows them. The offsets known
    /// here may trail MongoDB's by a flush (another replica's writes); starting earlier is
    /// safe, since the pipeline skips what the partition's stored state already holds.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::Consumer as _;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut start = TopicPartitionList::new();
                let stored = self.stored.lock().map(|s| s.clone()).unwrap_or_default();
                for e in tpl.elements() {
                    let next = stored
                        .get(&crate::store::tp_id(e.topic(), e.partition()))
                        .copied()
                        .unwrap_or(0);
                    let _ =
                        start.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next));
                }
                consumer.assign(&start)
            }
            _ => consumer.unassign(),
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "applying the rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(tpl) => RebalanceEvent::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoked(partitions(tpl)),
            Rebalance::Error(err) => {
                self.rebalances.with_label_values(&["failed"]).inc();
                tracing::warn!(error = %err, "rebalance failed");
                return;
            }
        };
        let name = match event {
            RebalanceEvent::Assigned(_) => "assigned",
            RebalanceEvent::Revoked(_) => "revoked",
        };
        self.rebalances.with_label_values(&[name]).inc();
        tracing::info!(?event, "partitions rebalanced");
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

/// The group's consumer.
pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// A consumer subscribed to the three input topics.
pub(crate) fn consumer(config: &Config, rebalances: IntCounterVec) -> Result<GroupConsumer> {
    use rdkafka::consumer::Consumer as _;
    let consumer: GroupConsumer =
        consumer_config(config).create_with_context(GroupContext::new(rebalances))?;
    let topics = config.topics();
    consumer.subscribe(&[&topics.sales, &topics.inventory, &topics.clients])?;
    Ok(consumer)
}

/// The group consumer's librdkafka settings.
fn consumer_config(config: &Config) -> ClientConfig {
    let session = config.kafka_session_timeout_ms;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 4).max(100).to_string())
        .set(
            "max.poll.interval.ms",
            config.kafka_max_poll_interval_ms.to_string(),
        )
        // Prefetched messages at most, for the whole consumer: librdkafka's default (64 MiB).
        // 8 MiB halved the rate from a backlog (the fetcher stalled while a flush's writes
        // held consumption back) for ~50 MiB less resident memory (docs/benchmarks.md).
        .set("queued.max.messages.kbytes", "65536")
        // When the prefetched messages reach that bound, librdkafka looks again only after
        // this long (default 1 s): from a backlog the queue then ran dry and consuming
        // stalled, 9.0 s instead of 3.1 s for 1,000,000 sales (docs/benchmarks.md).
        .set("fetch.queue.backoff.ms", "20")
        // How long a fetch may wait for new data (default 500 ms). Against tansu, at a steady
        // 10,000 sales/s, the default added about 150 ms to the median produce-to-visible
        // latency (docs/benchmarks.md); against Kafka a fetch returns once data arrives, and
        // this only sets how often an idle consumer asks again.
        .set("fetch.wait.max.ms", "100");
    client
}

/// The producer of dead letters: every one acknowledged by all in-sync replicas.
pub(crate) fn dead_letter_producer(config: &Config) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Sends `msg` as it came to `topic`, with the reason, its origin and its trace id in
/// headers.
pub(crate) async fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    msg: &BorrowedMessage<'_>,
    reason: &str,
) -> Result<()> {
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "source-topic",
            value: Some(msg.topic()),
        })
        .insert(Header {
            key: "source-partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "source-offset",
            value: Some(&offset),
        });
    let headers = match trace_id(msg) {
        Some(id) => headers.insert(Header {
            key: TRACE_HEADER,
            value: Some(id),
        }),
        None => headers,
    };
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(payload) = msg.payload() {
        record = record.payload(payload);
    }
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(source, _)| Error::DeadLetter {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_timeouts_come_from_the_settings() {
        let config = Config {
            kafka_session_timeout_ms: 6_000,
            kafka_max_poll_interval_ms: 7_000,
            ..Config::default()
        };
        let client = consumer_config(&config);
        assert_eq!(client.get("session.timeout.ms"), Some("6000"));
        assert_eq!(client.get("heartbeat.interval.ms"), Some("1500"));
        assert_eq!(client.get("max.poll.interval.ms"), Some("7000"));
    }
}
