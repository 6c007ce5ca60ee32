//! Rate limiters.
//!
//! - [`LocalLimiter`] / [`KeyedLimiter`]: GCRA inside one process (on `governor`), e.g. a
//!   per-client limit on an HTTP endpoint of one replica.
//! - [`RedisLimiter`]: GCRA shared by every process that uses the same Redis key — one limit
//!   for all replicas (seed 002's thread-local limiter limited nothing across processes).
//! - [`AdaptiveLimiter`]: AIMD pacing of outgoing calls that halves its rate when the callee
//!   signals overload (429, 503, timeouts) and grows back additively.

mod adaptive;
mod local;
mod redis;

pub use adaptive::{AdaptiveLimiter, AimdConfig, Outcome};
pub use local::{KeyedLimiter, LocalLimiter};
pub use redis::{FailureMode, RedisLimiter};

use crate::{Error, Result};

/// Checks a rate and burst and returns the interval between two requests.
fn interval(rate_per_sec: f64, burst: u32) -> Result<std::time::Duration> {
    if !rate_per_sec.is_finite() || rate_per_sec <= 0.0 {
        return Err(Error::invalid(
            "rate",
            format!("must be above 0, got {rate_per_sec}"),
        ));
    }
    if burst == 0 {
        return Err(Error::invalid("burst", "must be at least 1"));
    }
    match std::time::Duration::try_from_secs_f64(1.0 / rate_per_sec) {
        Ok(interval) if !interval.is_zero() => Ok(interval),
        Ok(_) => Err(Error::invalid("rate", "above one per nanosecond")),
        Err(_) => Err(Error::invalid(
            "rate",
            format!("{rate_per_sec} is too small"),
        )),
    }
}
