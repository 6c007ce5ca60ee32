//! Where records go. `send` returns only when the sink has confirmed every record of the batch
//! (or dead-lettered it with a reason), so the checkpoint that follows is never ahead of what
//! the sink holds.

mod http;
mod kafka;
pub mod rabbitmq;
mod redis;

use std::path::PathBuf;

pub use http::{HttpFailure, HttpSink};
pub use kafka::KafkaSink;
pub use rabbitmq::RabbitSink;
pub use redis::RedisSink;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::{Error, Result, record::Record};

/// What a batch became.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub sent: u64,
    pub dead_lettered: u64,
}

/// One of the sinks.
#[derive(Debug)]
pub enum Sink {
    Rabbit(Box<RabbitSink>),
    Redis(RedisSink),
    Http(HttpSink),
    Kafka(KafkaSink),
}

impl Sink {
    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        match self {
            Self::Rabbit(s) => s.send(records).await,
            Self::Redis(s) => s.send(records).await,
            Self::Http(s) => s.send(records).await,
            Self::Kafka(s) => s.send(records).await,
        }
    }

    /// Checks the sink can be reached (RabbitMQ: the exchange exists), for `/health`.
    pub async fn health_check(&mut self) -> Result<()> {
        match self {
            Self::Rabbit(s) => s.health_check().await,
            Self::Redis(s) => s.health_check().await,
            Self::Http(s) => s.health_check().await,
            Self::Kafka(s) => s.health_check().await,
        }
    }
}

/// Dead letters of sinks without a dead-letter queue: one JSON line per record with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetterFile {
    path: PathBuf,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Appends and syncs the records with their reasons.
    pub async fn write(&self, records: &[(&Record, String)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for (record, reason) in records {
            let body = match &record.body {
                Ok(v) => v.clone(),
                Err(_) => serde_json::Value::Null,
            };
            let line =
                json!({"id": record.id, "topic": record.topic, "reason": reason, "record": body});
            lines.extend(serde_json::to_vec(&line).map_err(|e| Error::Io(e.to_string()))?);
            lines.push(b'\n');
        }
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", self.path.display()));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(io)?;
        file.write_all(&lines).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        tracing::warn!(count = records.len(), file = %self.path.display(), "records dead-lettered");
        Ok(())
    }
}

/// Valid aggregator events with their records, and the other records with the reason.
pub type Valid<'a> = (
    Vec<(&'a Record, sluice_core::Event)>,
    Vec<(&'a Record, String)>,
);

/// Splits a batch for the aggregator's sinks: records that are valid aggregator events (with
/// the event) and the rest (with the reason), which go to the dead-letter file.
pub fn aggregator_events(records: &[Record]) -> Valid<'_> {
    let (mut events, mut poison) = (Vec::with_capacity(records.len()), Vec::new());
    for (i, record) in records.iter().enumerate() {
        match &record.body {
            Ok(body) => match sluice_core::Event::from_json(body, Some(i)) {
                Ok(event) => events.push((record, event)),
                Err(e) => poison.push((record, format!("not an aggregator event: {e}"))),
            },
            Err(reason) => poison.push((record, reason.clone())),
        }
    }
    (events, poison)
}

/// Records that can be sent, with their JSON bytes, and records that cannot, with the reason.
pub type Split<'a> = (Vec<(&'a Record, Vec<u8>)>, Vec<(&'a Record, String)>);

/// Splits a batch into what can be sent (with its JSON bytes) and what cannot (with the reason).
pub fn serialise(records: &[Record], max_bytes: usize) -> Split<'_> {
    let (mut ok, mut poison) = (Vec::new(), Vec::new());
    for record in records {
        match &record.body {
            Err(reason) => poison.push((record, reason.clone())),
            Ok(body) => match serde_json::to_vec(body) {
                Ok(bytes) if bytes.len() <= max_bytes => ok.push((record, bytes)),
                Ok(bytes) => poison.push((
                    record,
                    format!("{} bytes is over the {max_bytes}-byte limit", bytes.len()),
                )),
                Err(e) => poison.push((record, format!("cannot be serialised: {e}"))),
            },
        }
    }
    (ok, poison)
}
