//! When a breaker trips and how it recovers, with presets per kind of dependency.

use std::time::Duration;

use crate::{Error, Result};

/// When a breaker trips and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row; 0 turns this rule off.
    pub consecutive_failures: u32,
    /// Trip when failures / calls over the window reach this (0 < rate ≤ 1); above 1 turns this
    /// rule off.
    pub failure_rate: f64,
    /// The sliding window of the failure rate.
    pub window: Duration,
    /// The failure rate is judged only with at least this many calls in the window.
    pub min_calls: u32,
    /// How long the breaker stays open before probing (at most 365 days).
    pub open_for: Duration,
    /// Probes allowed at the same time while half-open.
    pub half_open_probes: u32,
    /// Successful probes needed to close again.
    pub half_open_successes: u32,
    /// A probe that has not reported after this long counts as failed, so a hung call cannot
    /// hold a probe slot forever (above 0, at most 365 days). Make it longer than a slow but
    /// healthy call: a probe that succeeds after its timeout is not counted.
    pub probe_timeout: Duration,
}

impl BreakerConfig {
    /// For a database pool: trips fast (5 in a row, or 50 % of ≥ 20 calls in 10 s), probes after
    /// 5 s with one query at a time, closes after 2 successes; a probe query may take 30 s.
    pub fn database() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            half_open_successes: 2,
            probe_timeout: Duration::from_secs(30),
        }
    }

    /// For a message broker: 5 in a row or 50 % of ≥ 20 calls in 30 s; probes after 10 s, 2 at a
    /// time, closes after 3 successes (a reconnecting broker often flaps). A probe may take
    /// 2 min: the producer's probe is a whole batch, with confirm timeouts and retries.
    pub fn broker() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            open_for: Duration::from_secs(10),
            half_open_probes: 2,
            half_open_successes: 3,
            probe_timeout: Duration::from_secs(120),
        }
    }

    /// For a remote HTTP API: 5 in a row or 50 % of ≥ 10 calls in 60 s; probes after 30 s, 3 at a
    /// time, closes after 3 successes; a probe request may take 60 s.
    pub fn http_api() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 10,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
            half_open_successes: 3,
            probe_timeout: Duration::from_secs(60),
        }
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.failure_rate.is_nan() || self.failure_rate <= 0.0 {
            return Err(Error::invalid("failure_rate", "must be above 0"));
        }
        if self.window.is_zero() {
            return Err(Error::invalid("window", "must be longer than 0"));
        }
        if self.half_open_probes == 0 {
            return Err(Error::invalid("half_open_probes", "must be at least 1"));
        }
        if self.half_open_successes == 0 {
            return Err(Error::invalid("half_open_successes", "must be at least 1"));
        }
        Error::check_wait("open_for", self.open_for)?;
        if self.probe_timeout.is_zero() {
            return Err(Error::invalid("probe_timeout", "must be longer than 0"));
        }
        Error::check_wait("probe_timeout", self.probe_timeout)?;
        Ok(())
    }
}
