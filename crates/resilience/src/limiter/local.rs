//! In-process GCRA on `governor`.

use std::{hash::Hash, num::NonZeroU32};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};

use super::interval;
use crate::{Error, Result};

fn quota(rate_per_sec: f64, burst: u32) -> Result<Quota> {
    let period = interval(rate_per_sec, burst)?;
    let burst =
        NonZeroU32::new(burst).ok_or_else(|| Error::invalid("burst", "must be at least 1"))?;
    Ok(Quota::with_period(period)
        .ok_or_else(|| Error::invalid("rate", "too high"))?
        .allow_burst(burst))
}

/// One limit for the whole process: `rate` per second on average, `burst` at once.
///
/// ```
/// use sluice_resilience::LocalLimiter;
///
/// let limiter = LocalLimiter::new(100.0, 2).expect("valid");
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let refused = limiter.check().expect_err("burst used up");
/// assert!(refused.retry_after().is_some());
/// ```
#[derive(Debug)]
pub struct LocalLimiter {
    limiter: governor::DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl LocalLimiter {
    /// `rate_per_sec` may be fractional (0.5 = one every two seconds).
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Self> {
        Ok(Self {
            limiter: RateLimiter::direct(quota(rate_per_sec, burst)?),
            clock: DefaultClock::default(),
        })
    }

    /// Admits one request, or says how long until one would be admitted.
    pub fn check(&self) -> Result<()> {
        self.limiter
            .check()
            .map_err(|not_until| Error::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }
}

/// A limit per key (client address, API key, tenant).
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Every key gets `rate_per_sec` and `burst` of its own.
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Self> {
        Ok(Self {
            limiter: RateLimiter::keyed(quota(rate_per_sec, burst)?),
            clock: DefaultClock::default(),
        })
    }

    /// Admits one request of `key`.
    pub fn check(&self, key: &K) -> Result<()> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| Error::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets keys that are back to a full burst, bounding memory; call now and then.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_refuses_with_a_wait() {
        let l = LocalLimiter::new(10.0, 3).expect("valid");
        for _ in 0..3 {
            l.check().expect("within burst");
        }
        match l.check() {
            Err(Error::RateLimited { retry_after }) => {
                assert!(
                    retry_after <= std::time::Duration::from_millis(100),
                    "{retry_after:?}"
                );
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn keys_have_separate_budgets() {
        let l = KeyedLimiter::new(1.0, 1).expect("valid");
        l.check(&"a").expect("a's first");
        assert!(l.check(&"a").is_err());
        l.check(&"b").expect("b's first");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn rejects_nonsense_settings_by_name() {
        for (rate, burst, setting) in [
            (0.0, 1, "rate"),
            (f64::NAN, 1, "rate"),
            (1e-300, 1, "rate"),
            (f64::INFINITY, 1, "rate"),
            (1.0, 0, "burst"),
        ] {
            let err = LocalLimiter::new(rate, burst).expect_err("invalid");
            assert!(err.to_string().contains(setting), "{err}");
        }
    }
}
