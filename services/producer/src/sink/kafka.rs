//! Kafka: an idempotent producer with `acks=all`; a batch is confirmed when every record's
//! delivery report says so. Records carry their topic (the retail scenario's three topics) or
//! go to the default one; the key is a field of the record, chosen by config.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::Value;

use super::{DeadLetterFile, Delivered, serialise};
use crate::{Error, Result, record::Record};

pub struct KafkaSink {
    producer: FutureProducer,
    topic_prefix: String,
    default_topic: String,
    key_field: Option<String>,
    max_bytes: usize,
    dead: DeadLetterFile,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("default_topic", &self.default_topic)
            .finish()
    }
}

impl KafkaSink {
    pub fn new(
        brokers: &str,
        topic_prefix: &str,
        default_topic: &str,
        key_field: Option<String>,
        max_bytes: usize,
        dead: DeadLetterFile,
    ) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| Error::Kafka(e.to_string()))?;
        Ok(Self {
            producer,
            topic_prefix: topic_prefix.to_owned(),
            default_topic: default_topic.to_owned(),
            key_field,
            max_bytes,
            dead,
        })
    }

    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        let (ok, poison) = serialise(records, self.max_bytes);
        self.dead.write(&poison).await?;
        let keys: Vec<Option<String>> = ok
            .iter()
            .map(|(r, _)| {
                let field = self.key_field.as_deref()?;
                match r.body.as_ref().ok()?.get(field)? {
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            })
            .collect();
        let topics: Vec<String> = ok
            .iter()
            .map(|(r, _)| {
                format!(
                    "{}{}",
                    self.topic_prefix,
                    r.topic.as_deref().unwrap_or(&self.default_topic)
                )
            })
            .collect();
        let sends = ok
            .iter()
            .zip(&keys)
            .zip(&topics)
            .map(|(((_, bytes), key), topic)| {
                let mut message = FutureRecord::to(topic).payload(bytes.as_slice());
                if let Some(key) = key {
                    message = message.key(key.as_str());
                }
                self.producer.send(message, Duration::from_secs(30))
            });
        for result in join_all(sends).await {
            result.map_err(|(e, _)| Error::Kafka(format!("delivery failed: {e}")))?;
        }
        Ok(Delivered {
            sent: ok.len() as u64,
            dead_lettered: poison.len() as u64,
        })
    }

    pub async fn health_check(&mut self) -> Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?
        .map_err(|e| Error::Kafka(e.to_string()))
    }
}
