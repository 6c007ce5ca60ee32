use std::time::Duration;

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
    Kafka(String),
    #[error("HTTP sink: {0}")]
    Http(String),
    #[error("the aggregator refused the batch: {0}")]
    HttpRejected(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("publisher confirms did not arrive within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("publishing paused: {0}")]
    BreakerOpen(String),
    #[error("dead-lettering failed: {0}")]
    DeadLetter(String),
    #[error("not connected to the broker")]
    NotConnected,
    #[error("transform state: {0}")]
    Transform(#[from] serde_json::Error),
}

impl Error {
    /// True when sending the same batch again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::HttpRejected(_) | Self::Config { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
