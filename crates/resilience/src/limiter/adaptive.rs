//! AIMD pacing of outgoing calls: additive increase on success, multiplicative decrease on an
//! overload signal, like TCP congestion control.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::{Error, Result, error::LONGEST_WAIT};

/// What a call's outcome says about the callee's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served: grow the rate.
    Success,
    /// 429, 503 or a timeout: cut the rate.
    Overload,
    /// Anything else (e.g. a 400): no signal.
    Neutral,
}

impl Outcome {
    /// Classifies an HTTP status: 429 and 503 are overload, other 2xx/3xx success.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            429 | 503 => Self::Overload,
            200..=399 => Self::Success,
            _ => Self::Neutral,
        }
    }
}

/// Limits and steps of an [`AdaptiveLimiter`].
#[derive(Debug, Clone, PartialEq)]
pub struct AimdConfig {
    /// Requests per second at start.
    pub initial_rate: f64,
    /// The rate never goes below this.
    pub min_rate: f64,
    /// Nor above this.
    pub max_rate: f64,
    /// Requests per second added per second of successes at the current rate.
    pub increase: f64,
    /// The factor applied on overload (0 < f < 1).
    pub decrease: f64,
    /// Overload signals within this time after a cut do not cut again (they describe the same
    /// congestion). At most 365 days.
    pub cooldown: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            initial_rate: 100.0,
            min_rate: 1.0,
            max_rate: 10_000.0,
            increase: 10.0,
            decrease: 0.5,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Paces calls at a rate that adapts to the callee's signals.
///
/// ```
/// use sluice_resilience::limiter::{AdaptiveLimiter, AimdConfig, Outcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let limiter = AdaptiveLimiter::new(AimdConfig::default()).expect("valid");
/// limiter.acquire().await;
/// limiter.record(Outcome::from_http_status(429));
/// assert_eq!(limiter.rate(), 50.0);
/// # }
/// ```
#[derive(Debug)]
pub struct AdaptiveLimiter {
    config: AimdConfig,
    state: Mutex<Aimd>,
}

#[derive(Debug)]
struct Aimd {
    rate: f64,
    next_slot: Instant,
    last_cut: Option<Instant>,
}

impl AdaptiveLimiter {
    /// Checks the config, naming the first bad value.
    pub fn new(config: AimdConfig) -> Result<Self> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(config.min_rate)
            || !positive(config.max_rate)
            || config.min_rate > config.max_rate
        {
            return Err(Error::invalid("min_rate", "need 0 < min_rate ≤ max_rate"));
        }
        // The pacing interval is added to the clock; past 365 days that could overflow it.
        match Duration::try_from_secs_f64(1.0 / config.min_rate) {
            Ok(interval) if interval <= LONGEST_WAIT => {}
            _ => {
                return Err(Error::invalid(
                    "min_rate",
                    "too small to pace: below one per 365 days",
                ));
            }
        }
        if !(config.min_rate..=config.max_rate).contains(&config.initial_rate) {
            return Err(Error::invalid(
                "initial_rate",
                "must lie within [min_rate, max_rate]",
            ));
        }
        if !(config.decrease > 0.0 && config.decrease < 1.0) {
            return Err(Error::invalid(
                "decrease",
                "must lie strictly between 0 and 1",
            ));
        }
        if !(config.increase.is_finite() && config.increase >= 0.0) {
            return Err(Error::invalid("increase", "must be 0 or more"));
        }
        Error::check_wait("cooldown", config.cooldown)?;
        Ok(Self {
            state: Mutex::new(Aimd {
                rate: config.initial_rate,
                next_slot: Instant::now(),
                last_cut: None,
            }),
            config,
        })
    }

    /// The current rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Waits for the next slot at the current rate.
    pub async fn acquire(&self) {
        let slot = {
            let mut s = self.lock();
            let slot = s.next_slot.max(Instant::now());
            // rate ≥ min_rate, validated to pace at least once per 365 days: cannot overflow.
            s.next_slot = slot + Duration::from_secs_f64(1.0 / s.rate);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Takes the next slot if it is due now, or says how long until it is.
    pub fn try_acquire(&self) -> Result<()> {
        let mut s = self.lock();
        let now = Instant::now();
        if s.next_slot > now {
            return Err(Error::RateLimited {
                retry_after: s.next_slot - now,
            });
        }
        s.next_slot = now + Duration::from_secs_f64(1.0 / s.rate);
        Ok(())
    }

    /// Feeds back a call's outcome.
    pub fn record(&self, outcome: Outcome) {
        let c = &self.config;
        let mut s = self.lock();
        match outcome {
            Outcome::Success => s.rate = (s.rate + c.increase / s.rate).min(c.max_rate),
            Outcome::Overload => {
                let now = Instant::now();
                // `cooldown` is validated far below overflow; were it not, an unrepresentable end
                // means the cooldown is still running.
                let cooling = s
                    .last_cut
                    .is_some_and(|at| at.checked_add(c.cooldown).is_none_or(|end| now < end));
                if cooling {
                    return;
                }
                s.rate = (s.rate * c.decrease).max(c.min_rate);
                s.last_cut = Some(now);
            }
            Outcome::Neutral => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Aimd> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> AdaptiveLimiter {
        AdaptiveLimiter::new(AimdConfig {
            initial_rate: 100.0,
            min_rate: 10.0,
            max_rate: 200.0,
            increase: 10.0,
            decrease: 0.5,
            cooldown: Duration::from_secs(1),
        })
        .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn overload_halves_once_per_cooldown_and_never_below_min() {
        let l = limiter();
        l.record(Outcome::Overload);
        l.record(Outcome::Overload);
        assert_eq!(l.rate(), 50.0, "the second signal is the same congestion");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.record(Outcome::Overload);
        }
        assert_eq!(l.rate(), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_grow_the_rate_additively_up_to_max() {
        let l = limiter();
        // One second of successes at ~100/s adds about `increase`.
        for _ in 0..100 {
            l.record(Outcome::Success);
        }
        assert!((l.rate() - 110.0).abs() < 0.5, "{}", l.rate());
        for _ in 0..100_000 {
            l.record(Outcome::Success);
        }
        assert_eq!(l.rate(), 200.0);
        l.record(Outcome::Neutral);
        assert_eq!(l.rate(), 200.0);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_paces_calls_at_the_current_rate() {
        let l = AdaptiveLimiter::new(AimdConfig {
            initial_rate: 10.0,
            ..AimdConfig::default()
        })
        .expect("valid");
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(l.try_acquire().is_err(), "the next slot is 100 ms away");
    }

    #[test]
    fn statuses_map_to_signals() {
        assert_eq!(Outcome::from_http_status(429), Outcome::Overload);
        assert_eq!(Outcome::from_http_status(503), Outcome::Overload);
        assert_eq!(Outcome::from_http_status(204), Outcome::Success);
        assert_eq!(Outcome::from_http_status(400), Outcome::Neutral);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_too_long_for_the_clock_are_refused_instead_of_panicking() {
        for (setting, config) in [
            (
                "cooldown",
                AimdConfig {
                    cooldown: Duration::MAX,
                    ..AimdConfig::default()
                },
            ),
            (
                "min_rate",
                AimdConfig {
                    initial_rate: 1e-19,
                    min_rate: 1e-19,
                    ..AimdConfig::default()
                },
            ),
        ] {
            match AdaptiveLimiter::new(config) {
                Err(err) => assert!(err.to_string().contains(setting), "{err}"),
                Ok(l) => {
                    // Accepted, these values used to panic here: `Instant + Duration` overflows.
                    l.record(Outcome::Overload);
                    l.record(Outcome::Overload);
                    l.acquire().await;
                    l.acquire().await;
                    panic!("{setting}: accepted");
                }
            }
        }
    }

    #[test]
    fn bad_configs_name_the_setting() {
        let err = AdaptiveLimiter::new(AimdConfig {
            decrease: 1.5,
            ..AimdConfig::default()
        })
        .expect_err("invalid");
        assert!(err.to_string().contains("decrease"), "{err}");
    }
}
