//! Circuit breaker: stop calling a dependency that keeps failing, test it with a few probes
//! after a cooldown, and resume when the probes succeed.
//!
//! - **Closed**: calls pass. It trips open after `consecutive_failures` failures in a row, or
//!   when the failure rate over the sliding `window` reaches `failure_rate` once at least
//!   `min_calls` calls were seen there.
//! - **Open**: calls are rejected at once with [`Error::CircuitOpen`] for `open_for`.
//! - **Half-open**: at most `half_open_probes` calls run at the same time (seed 002's breaker
//!   let every waiting caller through at once); `half_open_successes` successes close it, one
//!   failure opens it again, and so does a probe that has not reported within `probe_timeout`
//!   (it would otherwise hold its slot forever).
//!
//! Every state change starts a new *generation*: each closed period and each half-open round is
//! one. A permit remembers the generation it was granted in, and its outcome counts only if the
//! breaker is still in it. A slow call started before the breaker tripped says nothing about
//! the dependency after it recovered, and a probe of a failed round must neither count towards
//! the next round nor hold one of its slots.
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

mod config;
mod layer;
mod registry;
mod window;

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use config::BreakerConfig;
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
    pub(crate) fn as_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
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
    /// Mirror of `core.generation << 2 | core.state`, so the lock-free closed path learns both
    /// with one load.
    word: AtomicU64,
    core: Mutex<Core>,
    metrics: Option<BreakerMetrics>,
}

fn pack(state: State, generation: u64) -> u64 {
    generation << 2 | u64::from(state.as_u8())
}

fn unpack(word: u64) -> (State, u64) {
    (State::from_u8((word & 3) as u8), word >> 2)
}

struct Core {
    state: State,
    /// Counts state changes (see the module docs). 2^62 of them cannot happen.
    generation: u64,
    consecutive: u32,
    window: Window,
    opened_at: Instant,
    /// This round's probes that have not reported: ticket and start.
    probes: Vec<(u64, Instant)>,
    next_ticket: u64,
    probe_successes: u32,
}

impl Core {
    fn remove_probe(&mut self, ticket: u64) {
        self.probes.retain(|(t, _)| *t != ticket);
    }
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
            generation: 0,
            consecutive: 0,
            window: Window::new(config.window, now),
            opened_at: now,
            probes: Vec::new(),
            next_ticket: 0,
            probe_successes: 0,
        };
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                config,
                word: AtomicU64::new(pack(State::Closed, 0)),
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
    /// call moves it to half-open; a half-open one whose probe timed out reports `HalfOpen`
    /// until the next call or outcome opens it).
    pub fn state(&self) -> State {
        unpack(self.inner.word.load(Ordering::Acquire)).0
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
        let (state, generation) = unpack(self.inner.word.load(Ordering::Acquire));
        if state == State::Closed {
            return Ok(self.permit(generation, None));
        }
        let config = &self.inner.config;
        let mut core = self.lock();
        let now = Instant::now();
        self.expire_probes(&mut core, now);
        if core.state == State::Open {
            // `open_for` is validated far below overflow; if it still overflowed, staying open
            // is the safe answer (a panic here would take the caller down).
            match core.opened_at.checked_add(config.open_for) {
                Some(reopen_at) if now < reopen_at => return Err(self.reject(reopen_at - now)),
                Some(_) => self.transition(&mut core, State::HalfOpen, now),
                None => return Err(self.reject(config.open_for)),
            }
        }
        match core.state {
            State::Closed => Ok(self.permit(core.generation, None)),
            State::HalfOpen if core.probes.len() < config.half_open_probes as usize => {
                let ticket = core.next_ticket;
                core.next_ticket += 1;
                core.probes.push((ticket, now));
                Ok(self.permit(core.generation, Some(ticket)))
            }
            _ => Err(self.reject(config.open_for)),
        }
    }

    fn permit(&self, generation: u64, probe: Option<u64>) -> Permit {
        Permit {
            breaker: self.clone(),
            generation,
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

    fn record(&self, permit: &Permit, failed: bool) {
        if let Some(m) = &self.inner.metrics {
            if failed { &m.failures } else { &m.successes }.inc();
        }
        let config = &self.inner.config;
        let mut core = self.lock();
        let now = Instant::now();
        // A probe reporting after its deadline is judged as if the deadline had been noticed
        // first: it timed out, whatever it says now.
        self.expire_probes(&mut core, now);
        if core.generation != permit.generation {
            return;
        }
        if let Some(ticket) = permit.probe {
            core.remove_probe(ticket);
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
        // Not a probe and still its generation: granted while closed, so still closed; the check
        // only guards against a future state that grants permits otherwise.
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

    fn release_probe(&self, generation: u64, ticket: u64) {
        let mut core = self.lock();
        // A probe of an earlier round holds no slot of this one.
        if core.generation == generation {
            core.remove_probe(ticket);
        }
    }

    /// A probe that has not reported within `probe_timeout` counts as failed at its deadline:
    /// the dependency did not answer in time. The breaker opens from that instant (as if a timer
    /// had fired then), which ends the round and frees every slot; the hung call's outcome, if
    /// it ever comes, belongs to a past generation and is ignored.
    fn expire_probes(&self, core: &mut Core, now: Instant) {
        if core.state != State::HalfOpen {
            return;
        }
        let Some(oldest) = core.probes.iter().map(|(_, started)| *started).min() else {
            return;
        };
        let timeout = self.inner.config.probe_timeout;
        match oldest.checked_add(timeout) {
            Some(deadline) if deadline <= now => {
                tracing::warn!(breaker = %self.inner.name, ?timeout, "a half-open probe did not report in time; counting it as failed");
                self.transition(core, State::Open, deadline);
            }
            _ => {}
        }
    }

    /// Moves to `to` as of `now`, starting a new generation.
    fn transition(&self, core: &mut Core, to: State, now: Instant) {
        let from = core.state;
        if from == to {
            return;
        }
        core.state = to;
        core.generation += 1;
        // Probes belong to the round that granted them.
        core.probes.clear();
        match to {
            State::Open => core.opened_at = now,
            State::HalfOpen => core.probe_successes = 0,
            State::Closed => {
                core.consecutive = 0;
                core.window.reset(now);
            }
        }
        self.inner
            .word
            .store(pack(to, core.generation), Ordering::Release);
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
    /// The generation the permit was granted in; its outcome counts only in that one.
    generation: u64,
    /// The probe's ticket, for a half-open probe.
    probe: Option<u64>,
    settled: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(&self, false);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(&self, true);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (false, Some(ticket)) = (self.settled, self.probe) {
            self.breaker.release_probe(self.generation, ticket);
        }
    }
}

#[cfg(test)]
mod tests;
