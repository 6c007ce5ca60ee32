//! Kafka: accountant input published with an idempotent producer (`acks=all`), so it takes the
//! same path as any other input; and the analytics consumer group's lag for the admin view.

use std::time::Duration;

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::Value;
use sluice_core::wire::TRACE_HEADER;

use crate::{Error, Result};

/// How long a publish may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a message landed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The idempotent producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    brokers: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl Publisher {
    /// A producer for `brokers`; connects lazily.
    pub fn new(brokers: &str) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self {
            producer,
            brokers: brokers.to_owned(),
        })
    }

    /// Publishes `message` under `key`, with `trace_id` in its trace header, and waits for
    /// the acknowledgement.
    #[tracing::instrument(skip(self, message))]
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        message: &Value,
        trace_id: &str,
    ) -> Result<Delivered> {
        let payload = message.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACE_HEADER,
            value: Some(trace_id),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(&payload)
            .headers(headers);
        let delivery = self
            .producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map_err(|(err, _)| Error::Kafka(err))?;
        Ok(Delivered {
            topic: topic.to_owned(),
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }

    /// Messages of `topics` not yet committed by consumer group `group` (None when the broker
    /// could not say). Blocking client calls, run off the async workers.
    pub async fn lag(&self, group: &str, topics: Vec<String>) -> Option<i64> {
        let (brokers, group) = (self.brokers.clone(), group.to_owned());
        tokio::task::spawn_blocking(move || lag_blocking(&brokers, &group, &topics).ok())
            .await
            .ok()
            .flatten()
    }
}

fn lag_blocking(brokers: &str, group: &str, topics: &[String]) -> Result<i64> {
    let timeout = Duration::from_secs(2);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(lag)
}
