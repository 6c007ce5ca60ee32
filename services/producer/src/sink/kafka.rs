//! Kafka: an idempotent producer with `acks=all`; a batch is confirmed when every record's
//! delivery report says so. Records carry their topic (the retail scenario's three topics) or
//! go to the default one; the key is a field of the record, chosen by config.
//!
//! A record Kafka refuses for what it is (larger than librdkafka's `message.max.bytes`, a topic
//! name no broker accepts) is a poison record: sending the batch again would fail on it again,
//! for ever. Such refusals are told apart by librdkafka's error code, never by message text,
//! and dead-lettered with the reason; every other failure fails the batch, which is sent again.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::Value;
use sluice_core::wire::TRACE_HEADER;
use tokio_util::sync::CancellationToken;

use super::{DeadLetterFile, Delivered, serialise};
use crate::{Error, Result, record::Record};

/// How long deliveries in flight may still take once the run is stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct KafkaSink {
    producer: FutureProducer,
    topic_prefix: String,
    default_topic: String,
    key_field: Option<String>,
    max_bytes: usize,
    dead: DeadLetterFile,
    shutdown: CancellationToken,
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
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()?;
        Ok(Self {
            producer,
            topic_prefix: topic_prefix.to_owned(),
            default_topic: default_topic.to_owned(),
            key_field,
            max_bytes,
            dead,
            shutdown,
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
            .map(|(((record, bytes), key), topic)| {
                // The record's id (unique per source: collection and _id, file and line, …)
                // follows it as its trace id.
                let headers = OwnedHeaders::new().insert(Header {
                    key: TRACE_HEADER,
                    value: Some(record.id.as_str()),
                });
                let mut message = FutureRecord::to(topic)
                    .payload(bytes.as_slice())
                    .headers(headers);
                if let Some(key) = key {
                    message = message.key(key.as_str());
                }
                self.producer.send(message, Duration::from_secs(30))
            });
        let (mut sent, mut refused, mut failed) = (0, Vec::new(), None);
        // A stop leaves the deliveries in flight STOP_GRACE to finish (a healthy broker needs
        // milliseconds, so the batch in flight is still confirmed), not the 30 s an unreachable
        // one would take.
        let reports = tokio::select! {
            reports = join_all(sends) => reports,
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => return Err(Error::Stopped),
        };
        for ((record, _), result) in ok.iter().zip(reports) {
            match result {
                Ok(_) => sent += 1,
                Err((e, _)) if is_refusal(&e) => {
                    refused.push((*record, format!("Kafka refused the record: {e}")));
                }
                Err((e, _)) => failed = Some(e),
            }
        }
        // Written even when the batch fails: the refusals are final, and a batch sent again
        // writes them again (the dead-letter file is at least once, like the sink).
        self.dead.write(&refused).await?;
        if let Some(e) = failed {
            return Err(Error::Kafka(e));
        }
        Ok(Delivered {
            sent,
            dead_lettered: (poison.len() + refused.len()) as u64,
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
        .await??;
        Ok(())
    }
}

/// True when Kafka refuses the record itself, so that sending it again cannot succeed.
fn is_refusal(error: &KafkaError) -> bool {
    match error {
        // A topic name with a NUL byte cannot even be handed to librdkafka.
        KafkaError::Nul(_) => true,
        KafkaError::MessageProduction(code) => matches!(
            code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                // librdkafka's own check of the topic name (e.g. longer than it takes).
                | RDKafkaErrorCode::InvalidArgument
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9 item 14: with Kafka unreachable, a stop waited for the 30 s message timeout.
    #[tokio::test]
    async fn a_stop_ends_the_wait_for_an_unreachable_broker() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(sluice_testkit::unique_name("kafka-stop"));
        let dead = DeadLetterFile::new(dir.join("dead.jsonl"));
        let shutdown = CancellationToken::new();
        // Nothing listens on port 1: no delivery report comes before the message timeout.
        let mut sink = KafkaSink::new("127.0.0.1:1", "", "t", None, 1024, dead, shutdown.clone())?;
        let records = [Record::new("r1", None, serde_json::json!({"n": 1}))];
        let started = std::time::Instant::now();
        let sending = sink.send(&records);
        shutdown.cancel();
        let err = sending.await.err();
        assert!(matches!(err, Some(Error::Stopped)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[test]
    fn refusals_are_told_by_error_code() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert!(is_refusal(&produce(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_refusal(&produce(RDKafkaErrorCode::InvalidTopic)));
        assert!(!is_refusal(&produce(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!is_refusal(&produce(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_refusal(&produce(RDKafkaErrorCode::NotEnoughReplicas)));
    }
}
