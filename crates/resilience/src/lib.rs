//! sluice-resilience: how sluice services survive faults of brokers and databases and stay
//! polite to the services they call. No service logic lives here.
//!
//! # Layout
//! - [`backoff`]: exponential delays with a cap, full or decorrelated jitter, attempt and
//!   elapsed budgets; deterministic under a seed.
//! - [`retry`]: retries an async operation by a [`RetryPolicy`], asking a classifier whether an
//!   error is transient, permanent or carries a Retry-After, and telling a hook about each retry.
//! - [`breaker`]: circuit breaker (closed / open / half-open with a bounded number of probes),
//!   presets, a [`BreakerRegistry`] exporting Prometheus metrics, and a tower layer.
//! - [`limiter`]: rate limiters — in-process GCRA ([`LocalLimiter`], on `governor`), GCRA shared
//!   by many processes through Redis ([`RedisLimiter`]), and an AIMD [`AdaptiveLimiter`].
//! - [`bulkhead`]: bounded concurrency plus a bounded, timed wait queue.
//!
//! Nothing is global: registries and limiters are values the app creates and passes around.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use sluice_resilience::{BreakerConfig, CircuitBreaker, RetryPolicy, Verdict, retry};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::new("billing-api", BreakerConfig::http_api());
//! let policy = RetryPolicy::new(4).with_max_elapsed(Duration::from_secs(10));
//! let answer: Result<u32, String> = retry(
//!     &policy,
//!     |_err: &String| Verdict::Transient,
//!     |_| {},
//!     || async { breaker.call(async { Ok::<_, String>(42) }).await.map_err(|e| e.to_string()) },
//! )
//! .await;
//! assert_eq!(answer, Ok(42));
//! # }
//! ```

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod limiter;
pub mod retry;

mod error;

pub use backoff::{Backoff, Jitter};
pub use breaker::{BreakerConfig, BreakerRegistry, CallError, CircuitBreaker, State};
pub use bulkhead::Bulkhead;
pub use error::{Error, Result};
pub use limiter::{AdaptiveLimiter, FailureMode, LocalLimiter, RedisLimiter};
pub use retry::{RetryEvent, RetryPolicy, Verdict, retry};
