use std::time::Duration;

use crate::sink::HttpFailure;

/// Everything that can fail in the producer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("HTTP sink: {0}")]
    Http(#[source] HttpFailure),
    #[error("the aggregator refused the batch: {0}")]
    HttpRejected(#[source] HttpFailure),
    #[error("I/O: {0}")]
    Io(String),
    #[error("the input changed under the checkpoint: {0}")]
    InputChanged(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("publisher confirms did not arrive within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("publishing paused: {0}")]
    BreakerOpen(String),
    #[error("dead-lettering failed: {0}")]
    DeadLetter(String),
    #[error(
        "the broker returned `{id}` as unroutable from exchange `{exchange}` ({reason}): no queue is bound to take it"
    )]
    Unroutable {
        exchange: String,
        id: String,
        reason: String,
    },
    #[error("the broker did not confirm `{0}`: publisher confirms are off on the channel")]
    NotConfirmed(String),
    #[error("stopped before the batch was confirmed")]
    Stopped,
    #[error("not connected to the broker")]
    NotConnected,
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("transform state: {0}")]
    Transform(#[from] serde_json::Error),
}

impl Error {
    /// True when sending the same batch again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::HttpRejected(_) | Self::Config { .. })
    }
}

impl Error {
    /// How long the sink asked to be left alone before the batch is sent again (HTTP
    /// `Retry-After`, already capped): a wait the retry budget could not cover still applies.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http(HttpFailure::Status { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
