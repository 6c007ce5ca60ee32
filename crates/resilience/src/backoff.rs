//! Delays between attempts: exponential with a cap, optionally jittered.
//!
//! Jitter spreads the retries of many clients that failed together (seed 001's fixed backoff
//! made them all come back at once):
//! - [`Jitter::Full`]: a uniform delay in `[0, min(cap, base·factorⁿ)]`.
//! - [`Jitter::Decorrelated`]: `min(cap, uniform[base, 3·previous])`, which keeps delays apart
//!   without collapsing towards zero.
//!
//! `backon` was considered: it lacks decorrelated jitter and a seeded RNG for reproducible
//! tests, and what is needed here is a small iterator.
//!
//! ```
//! use std::time::Duration;
//! use sluice_resilience::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
//!     .with_jitter(Jitter::Full)
//!     .with_max_attempts(6)
//!     .with_seed(7);
//! let delays: Vec<Duration> = backoff.delays().collect();
//! assert_eq!(delays.len(), 6);
//! assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
//! assert_eq!(delays, backoff.delays().collect::<Vec<_>>(), "same seed, same delays");
//! ```

use std::time::Duration;

/// How delays are randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly `min(cap, base·factorⁿ)`.
    None,
    /// Uniform in `[0, min(cap, base·factorⁿ)]`.
    Full,
    /// `min(cap, uniform[base, 3·previous delay])`.
    Decorrelated,
}

/// A schedule of delays; [`delays`](Self::delays) yields them.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    factor: f64,
    jitter: Jitter,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    seed: Option<u64>,
}

impl Backoff {
    /// Doubling from `base` up to `cap`, full jitter, no budget.
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            factor: 2.0,
            jitter: Jitter::Full,
            max_attempts: None,
            max_elapsed: None,
            seed: None,
        }
    }

    /// Growth per attempt (values below 1 are taken as 1).
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// The jitter strategy.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// At most this many delays.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Stop once the delays would add up to more than this.
    pub fn with_max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// A fixed seed for the jitter, for reproducible schedules.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// No delay is ever longer than this.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delays, in order.
    pub fn delays(&self) -> Delays {
        Delays {
            rng: self
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            backoff: self.clone(),
            attempt: 0,
            previous: self.base,
            total: Duration::ZERO,
        }
    }

    /// The un-jittered delay of attempt `n` (0-based): `min(cap, base·factorⁿ)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Iterator over the delays of a [`Backoff`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    rng: fastrand::Rng,
    attempt: u32,
    previous: Duration,
    total: Duration,
}

impl Delays {
    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        let span = (high - low).as_nanos();
        let span = u64::try_from(span).unwrap_or(u64::MAX);
        low + Duration::from_nanos(self.rng.u64(0..=span))
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let b = &self.backoff;
        if b.max_attempts.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        let (base, cap, jitter) = (b.base, b.cap, b.jitter);
        let delay = match jitter {
            Jitter::None => b.ceiling(self.attempt),
            Jitter::Full => {
                let ceiling = b.ceiling(self.attempt);
                self.uniform(Duration::ZERO, ceiling)
            }
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3).min(cap);
                self.uniform(base.min(cap), high)
            }
        };
        if let Some(max) = self.backoff.max_elapsed
            && self.total + delay > max
        {
            return None;
        }
        self.attempt += 1;
        self.previous = delay;
        self.total += delay;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn every_delay_is_within_its_bounds(
            base_ms in 1u64..1_000,
            cap_ms in 1u64..60_000,
            factor in 1.0f64..4.0,
            jitter in jitter(),
            attempts in 0u32..40,
            seed in any::<u64>(),
        ) {
            let b = Backoff::exponential(Duration::from_millis(base_ms), Duration::from_millis(cap_ms))
                .with_factor(factor)
                .with_jitter(jitter)
                .with_max_attempts(attempts)
                .with_seed(seed);
            let delays: Vec<Duration> = b.delays().collect();
            prop_assert_eq!(delays.len(), attempts as usize);
            for (n, d) in delays.iter().enumerate() {
                prop_assert!(*d <= b.cap(), "delay {:?} above cap {:?}", d, b.cap());
                match jitter {
                    Jitter::None => prop_assert_eq!(*d, b.ceiling(n as u32)),
                    Jitter::Full => prop_assert!(*d <= b.ceiling(n as u32)),
                    Jitter::Decorrelated => prop_assert!(*d >= b.base().min(b.cap())),
                }
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_schedule(seed in any::<u64>(), jitter in jitter()) {
            let b = Backoff::exponential(Duration::from_millis(10), Duration::from_secs(10))
                .with_jitter(jitter)
                .with_max_attempts(20)
                .with_seed(seed);
            prop_assert_eq!(b.delays().collect::<Vec<_>>(), b.delays().collect::<Vec<_>>());
        }

        #[test]
        fn delays_never_add_up_beyond_max_elapsed(max_ms in 0u64..10_000, seed in any::<u64>(), jitter in jitter()) {
            let max = Duration::from_millis(max_ms);
            let b = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .with_jitter(jitter)
                .with_max_elapsed(max)
                .with_seed(seed);
            let total: Duration = b.delays().take(10_000).sum();
            prop_assert!(total <= max);
        }
    }

    #[test]
    fn without_jitter_doubles_up_to_the_cap() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(1000))
            .with_jitter(Jitter::None)
            .with_max_attempts(6);
        let ms: Vec<u128> = b.delays().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_cap() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }
}
