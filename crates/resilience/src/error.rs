use std::time::Duration;

/// The longest wait a setting may ask for. No cooldown needs more, and it keeps
/// `Instant + wait` far from the end of the clock's range, where the addition panics.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Every refusal and failure of sluice-resilience.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The breaker is open (or half-open with every probe slot taken): the call was not made.
    #[error("circuit breaker `{name}` is open; retry in {retry_in:?}")]
    CircuitOpen { name: String, retry_in: Duration },

    /// The bulkhead's running slots and its wait queue are both full.
    #[error("bulkhead `{name}` is full: {max_concurrent} running and {max_queue} waiting")]
    BulkheadFull {
        name: String,
        max_concurrent: usize,
        max_queue: usize,
    },

    /// A caller waited in the bulkhead's queue longer than allowed.
    #[error("bulkhead `{name}`: no slot free within {waited:?}")]
    BulkheadTimeout { name: String, waited: Duration },

    /// The rate limit is reached; the caller may try again after `retry_after`.
    #[error("rate limit reached; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },

    /// A request costs more than the limiter's burst, so it can never be admitted: split it or
    /// raise the burst. Waiting does not help, hence no `retry_after`.
    #[error("a request of cost {cost} can never be admitted: the burst is {burst}")]
    CostAboveBurst { cost: u32, burst: u32 },

    /// The limiter's shared store could not be asked and the limiter fails closed.
    #[error("rate limiter store unavailable: {reason}")]
    StoreUnavailable { reason: String },

    /// A limiter or breaker was configured with values that make no sense.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidConfig {
        setting: &'static str,
        reason: String,
    },

    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// How long the caller should wait before trying again, when the refusal says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Refuses a wait longer than [`LONGEST_WAIT`], naming the setting.
    pub(crate) fn check_wait(setting: &'static str, wait: Duration) -> Result<()> {
        if wait > LONGEST_WAIT {
            return Err(Self::invalid(
                setting,
                format!("{wait:?} is longer than the limit of 365 days"),
            ));
        }
        Ok(())
    }

    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            setting,
            reason: reason.into(),
        }
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
