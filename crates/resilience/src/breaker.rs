//! Circuit breaker: stop calling a dependency that keeps failing, test it with a few probes
//! after a cooldown, and resume when the probes succeed.
//!
//! - **Closed**: calls pass. It trips open after `consecutive_failures` failures in a row, or
//!   when the failure rate over the sliding `window` reaches `failure_rate` once at least
//!   `min_calls` calls were seen there.
//! - **Open**: calls are rejected at once with [`Error::CircuitOpen`] for `open_for`.
//! - **Half-open**: at most `half_open_probes` calls run at the same time (seed 002's breaker
//!   let every waiting caller through at once); `half_open_successes` successes close it, one
//!   failure opens it again.
//!
//! The closed path costs an atomic load plus one short critical section to record the outcome
//! (see docs/benchmarks.md).
//!
//! ```
//! use sluice_resilience::{BreakerConfig, CallError, CircuitBreaker, State};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::new("postgres", BreakerConfig::database());
//! for _ in 0..5 {
//!     let _ = breaker.call(async { Err::<(), _>("connection refused") }).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let rejected = breaker.call(async { Ok::<_, &str>(()) }).await;
//! assert!(matches!(rejected, Err(CallError::Rejected(_))));
//! # }
//! ```

mod layer;
mod registry;
mod window;

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

pub use layer::{CircuitBreakerLayer, CircuitBreakerService, Classify, ErrorsOnly};
use registry::BreakerMetrics;
pub use registry::BreakerRegistry;
use tokio::time::Instant;
use window::Window;

use crate::{Error, Result};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn as_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// `closed`, `open` or `half_open`, as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

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
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probes allowed at the same time while half-open.
    pub half_open_probes: u32,
    /// Successful probes needed to close again.
    pub half_open_successes: u32,
}

impl BreakerConfig {
    /// For a database pool: trips fast (5 in a row, or 50 % of ≥ 20 calls in 10 s), probes after
    /// 5 s with one query at a time, closes after 2 successes.
    pub fn database() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            half_open_successes: 2,
        }
    }

    /// For a message broker: 5 in a row or 50 % of ≥ 20 calls in 30 s; probes after 10 s, 2 at a
    /// time, closes after 3 successes (a reconnecting broker often flaps).
    pub fn broker() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            open_for: Duration::from_secs(10),
            half_open_probes: 2,
            half_open_successes: 3,
        }
    }

    /// For a remote HTTP API: 5 in a row or 50 % of ≥ 10 calls in 60 s; probes after 30 s, 3 at a
    /// time, closes after 3 successes.
    pub fn http_api() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 10,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
            half_open_successes: 3,
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
        Ok(())
    }
}

/// Why a guarded call did not return a value.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call; the operation did not run.
    #[error(transparent)]
    Rejected(Error),
    /// The operation ran and failed.
    #[error("{0}")]
    Failed(E),
}

/// A named circuit breaker. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: BreakerConfig,
    /// Mirror of `core.state` for the lock-free closed path.
    state: AtomicU8,
    core: Mutex<Core>,
    metrics: Option<BreakerMetrics>,
}

struct Core {
    state: State,
    consecutive: u32,
    window: Window,
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A breaker without metrics; invalid values are replaced by the `database` preset's
    /// (use [`try_new`](Self::try_new) to be told instead).
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        let config = if config.validate().is_ok() {
            config
        } else {
            tracing::warn!(
                breaker = name,
                ?config,
                "invalid breaker config; using the database preset"
            );
            BreakerConfig::database()
        };
        Self::build(name, config, None)
    }

    /// A breaker without metrics, or the config's first invalid value.
    pub fn try_new(name: &str, config: BreakerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::build(name, config, None))
    }

    fn build(name: &str, config: BreakerConfig, metrics: Option<BreakerMetrics>) -> Self {
        let now = Instant::now();
        let core = Core {
            state: State::Closed,
            consecutive: 0,
            window: Window::new(config.window, now),
            opened_at: now,
            probes_in_flight: 0,
            probe_successes: 0,
        };
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                config,
                state: AtomicU8::new(State::Closed.as_u8()),
                core: Mutex::new(core),
                metrics,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state (an open breaker whose cooldown is over reports `Open` until the next
    /// call moves it to half-open).
    pub fn state(&self) -> State {
        match self.inner.state.load(Ordering::Acquire) {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Runs `fut` if the breaker allows it; every `Err` counts as a failure.
    pub async fn call<T, E, Fut>(&self, fut: Fut) -> Result<T, CallError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        match fut.await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(err) => {
                permit.failure();
                Err(CallError::Failed(err))
            }
        }
    }

    /// Asks for permission to make one call. Report the outcome on the permit; a permit dropped
    /// without an outcome (a cancelled call) counts as neither and frees its probe slot.
    pub fn try_acquire(&self) -> Result<Permit> {
        if self.inner.state.load(Ordering::Acquire) == State::Closed.as_u8() {
            return Ok(self.permit(false));
        }
        let mut core = self.lock();
        let now = Instant::now();
        if core.state == State::Open {
            let reopen_at = core.opened_at + self.inner.config.open_for;
            if now < reopen_at {
                return Err(self.reject(reopen_at - now));
            }
            self.transition(&mut core, State::HalfOpen, now);
        }
        match core.state {
            State::Closed => Ok(self.permit(false)),
            State::HalfOpen if core.probes_in_flight < self.inner.config.half_open_probes => {
                core.probes_in_flight += 1;
                Ok(self.permit(true))
            }
            _ => Err(self.reject(self.inner.config.open_for)),
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        }
    }

    fn reject(&self, retry_in: Duration) -> Error {
        if let Some(m) = &self.inner.metrics {
            m.rejections.inc();
        }
        Error::CircuitOpen {
            name: self.inner.name.clone(),
            retry_in,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave Core inconsistent: recover it.
        self.inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, probe: bool, failed: bool) {
        if let Some(m) = &self.inner.metrics {
            if failed { &m.failures } else { &m.successes }.inc();
        }
        let config = &self.inner.config;
        let mut core = self.lock();
        let now = Instant::now();
        if probe {
            core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
            if core.state != State::HalfOpen {
                return;
            }
            if failed {
                self.transition(&mut core, State::Open, now);
            } else {
                core.probe_successes += 1;
                if core.probe_successes >= config.half_open_successes {
                    self.transition(&mut core, State::Closed, now);
                }
            }
            return;
        }
        if core.state != State::Closed {
            return;
        }
        core.window.record(now, failed);
        core.consecutive = if failed { core.consecutive + 1 } else { 0 };
        let (calls, failures) = core.window.totals();
        let by_streak =
            config.consecutive_failures > 0 && core.consecutive >= config.consecutive_failures;
        let by_rate = calls >= u64::from(config.min_calls)
            && calls > 0
            && failures as f64 / calls as f64 >= config.failure_rate;
        if failed && (by_streak || by_rate) {
            self.transition(&mut core, State::Open, now);
        }
    }

    fn release_probe(&self) {
        let mut core = self.lock();
        core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
    }

    fn transition(&self, core: &mut Core, to: State, now: Instant) {
        let from = core.state;
        if from == to {
            return;
        }
        core.state = to;
        match to {
            State::Open => core.opened_at = now,
            State::HalfOpen => core.probe_successes = 0,
            State::Closed => {
                core.consecutive = 0;
                core.window.reset(now);
            }
        }
        self.inner.state.store(to.as_u8(), Ordering::Release);
        if let Some(m) = &self.inner.metrics {
            m.transition(from, to);
        }
        tracing::warn!(breaker = %self.inner.name, from = from.as_str(), to = to.as_str(), "circuit breaker state changed");
    }
}

/// Permission for one call; report [`success`](Self::success) or [`failure`](Self::failure).
#[derive(Debug)]
#[must_use = "report the outcome with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, false);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, true);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests;
