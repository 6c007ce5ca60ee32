use std::net::SocketAddr;

/// Everything that can go wrong in sluice-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing, has the wrong type or fails validation; `setting` names it as the
    /// user wrote it (an environment variable or a key of the config file).
    #[error("invalid setting `{setting}`: {reason}")]
    Config { setting: String, reason: String },

    /// An event failed validation.
    #[error(transparent)]
    Validation(#[from] crate::event::ValidationError),

    /// A wire message could not be encoded or decoded.
    #[error("wire message: {0}")]
    Wire(#[source] serde_json::Error),

    /// The HTTP listener could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP server stopped with an I/O error.
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A metric could not be created or registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
