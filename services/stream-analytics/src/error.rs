//! The one error type of the crate.

/// Everything that can fail in stream analytics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting failed validation; `setting` names it as the user writes it.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    /// Config loading, HTTP, metrics (sluice-core).
    #[error(transparent)]
    Core(#[from] sluice_core::Error),
    /// A MongoDB operation failed (server unreachable, command refused).
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// A stored document does not have the shape this version writes.
    #[error("stored state {id}: {reason}")]
    Stored { id: String, reason: String },
    /// A Kafka client call failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A dead letter could not be delivered.
    #[error("dead-lettering {topic}/{partition}@{offset} failed: {source}")]
    DeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
