//! Retrying an async operation: a policy (backoff and budget), a classifier that says what an
//! error means, and a hook that sees every retry (for metrics and logs).
//!
//! A permanent error returns at once; a transient one is retried after the next backoff delay;
//! `RetryAfter(d)` (the callee said when to come back, e.g. HTTP 429/503 `Retry-After`) waits
//! `d` instead, capped by the policy (a callee's header is input: `Retry-After: 18446744073709551615`
//! must neither panic nor park the caller for ever). The budget ends the loop: the number of
//! attempts, and the time since the first attempt, which a pending wait may not overrun.
//!
//! ```
//! use std::time::Duration;
//! use sluice_resilience::{RetryPolicy, Verdict, retry};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let mut calls = 0;
//! let result: Result<&str, u16> = retry(
//!     &RetryPolicy::new(5),
//!     |status: &u16| match status {
//!         503 => Verdict::RetryAfter(Duration::from_secs(1)),
//!         500..=599 => Verdict::Transient,
//!         _ => Verdict::Permanent,
//!     },
//!     |event| tracing::warn!(attempt = event.attempt, delay = ?event.delay, "retrying"),
//!     || {
//!         calls += 1;
//!         let n = calls;
//!         async move { if n < 3 { Err(503) } else { Ok("done") } }
//!     },
//! )
//! .await;
//! assert_eq!(result, Ok("done"));
//! # }
//! ```

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use crate::backoff::{Backoff, Jitter};

/// What an error means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt after the backoff delay.
    Transient,
    /// Will fail again: return it now.
    Permanent,
    /// The callee named the wait (Retry-After).
    RetryAfter(Duration),
}

/// How often and how long to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    max_retry_after: Duration,
}

/// The longest `RetryAfter` wait honoured unless the policy says otherwise.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// At most `max_attempts` calls in all (the first included), with 100 ms → 10 s
    /// exponential backoff and full jitter.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
                .with_jitter(Jitter::Full),
            max_attempts: max_attempts.max(1),
            max_elapsed: None,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// The delays between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Give up rather than wait past this long after the first attempt started.
    pub fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// The longest wait a `RetryAfter` verdict may ask for; longer ones wait this long.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The wait a `RetryAfter(wait)` verdict gets: `wait`, at most the policy's cap.
    pub fn retry_after(&self, wait: Duration) -> Duration {
        wait.min(self.max_retry_after)
    }

    /// Calls allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// What the hook is told before each wait.
#[derive(Debug)]
pub struct RetryEvent<'a, E> {
    /// The attempt that just failed, from 1.
    pub attempt: u32,
    /// Its error.
    pub error: &'a E,
    /// What the classifier said.
    pub verdict: Verdict,
    /// How long until the next attempt.
    pub delay: Duration,
}

/// Runs `op` until it succeeds, fails permanently or the budget is spent; returns the last
/// error in the latter cases.
pub async fn retry<T, E, Op, Fut>(
    policy: &RetryPolicy,
    classify: impl Fn(&E) -> Verdict,
    on_retry: impl FnMut(&RetryEvent<'_, E>),
    op: Op,
) -> Result<T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_until(policy, std::future::pending(), classify, on_retry, op).await
}

/// [`retry`] that gives up when `stop` completes (a shutdown): a wait between attempts ends at
/// once and the last error is returned; an attempt in progress is not interrupted, so the
/// caller never has to guess whether it took effect.
pub async fn retry_until<T, E, Op, Fut>(
    policy: &RetryPolicy,
    stop: impl Future<Output = ()>,
    classify: impl Fn(&E) -> Verdict,
    mut on_retry: impl FnMut(&RetryEvent<'_, E>),
    mut op: Op,
) -> Result<T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut stop = std::pin::pin!(stop);
    let start = Instant::now();
    let mut delays = policy.backoff.delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let verdict = classify(&error);
        let delay = match verdict {
            Verdict::Permanent => return Err(error),
            Verdict::RetryAfter(wait) => {
                delays.next();
                policy.retry_after(wait)
            }
            Verdict::Transient => match delays.next() {
                Some(delay) => delay,
                None => return Err(error),
            },
        };
        if attempt >= policy.max_attempts {
            return Err(error);
        }
        // Checked: `delay` may come from a header, and an overflow must not panic.
        if let Some(max) = policy.max_elapsed
            && start.elapsed().checked_add(delay).is_none_or(|at| at > max)
        {
            return Err(error);
        }
        on_retry(&RetryEvent {
            attempt,
            error: &error,
            verdict,
            delay,
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut stop => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn fixed(ms: u64) -> Backoff {
        Backoff::exponential(Duration::from_millis(ms), Duration::from_millis(ms))
            .with_jitter(Jitter::None)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = Cell::new(0);
        let mut delays = Vec::new();
        let out: Result<u32, &str> = retry(
            &RetryPolicy::new(5).with_backoff(fixed(100)),
            |_| Verdict::Transient,
            |e| delays.push(e.delay),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 3 { Err("flaky") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(out, Ok(3));
        assert_eq!(delays, [Duration::from_millis(100); 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_returns_at_once() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let out: Result<(), &str> = retry(
            &RetryPolicy::new(10),
            |_| Verdict::Permanent,
            |_| panic!("no retry expected"),
            || {
                calls.set(calls.get() + 1);
                async { Err("bad request") }
            },
        )
        .await;
        assert_eq!(out, Err("bad request"));
        assert_eq!(calls.get(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let out: Result<(), &str> = retry(
            &RetryPolicy::new(2).with_backoff(fixed(1)),
            |_| Verdict::RetryAfter(Duration::from_secs(7)),
            |_| {},
            || {
                calls.set(calls.get() + 1);
                async { Err("busy") }
            },
        )
        .await;
        assert_eq!(out, Err("busy"));
        assert_eq!(calls.get(), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    /// Issue 9 item 10: `Retry-After: 18446744073709551615` overflowed `elapsed + delay` and
    /// panicked; now the wait is capped and the call goes on.
    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_is_capped_and_never_panics() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let out: Result<u32, &str> = retry(
            &RetryPolicy::new(3).with_max_elapsed(Duration::from_secs(120)),
            |_| Verdict::RetryAfter(Duration::from_secs(u64::MAX)),
            |_| {},
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 2 { Err("busy") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(out, Ok(2));
        assert_eq!(start.elapsed(), DEFAULT_MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_elapsed_budget_returns_the_error_at_once() {
        let start = Instant::now();
        let out: Result<(), &str> = retry(
            &RetryPolicy::new(5)
                .with_max_elapsed(Duration::from_secs(10))
                .with_max_retry_after(Duration::MAX),
            |_| Verdict::RetryAfter(Duration::MAX),
            |_| panic!("no retry expected"),
            || async { Err("busy") },
        )
        .await;
        assert_eq!(out, Err("busy"));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// Issue 9 item 14: a shutdown during a wait ends the retries at once.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_between_attempts() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let stop = tokio::time::sleep(Duration::from_secs(3));
        let out: Result<(), &str> = retry_until(
            &RetryPolicy::new(5),
            stop,
            |_| Verdict::RetryAfter(Duration::from_secs(30)),
            |_| {},
            || {
                calls.set(calls.get() + 1);
                async { Err("busy") }
            },
        )
        .await;
        assert_eq!(out, Err("busy"));
        assert_eq!(calls.get(), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_attempt_budget() {
        let calls = Cell::new(0);
        let out: Result<(), u32> = retry(
            &RetryPolicy::new(4).with_backoff(fixed(10)),
            |_| Verdict::Transient,
            |_| {},
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(n) }
            },
        )
        .await;
        assert_eq!(out, Err(4), "the last error is returned");
    }

    #[tokio::test(start_paused = true)]
    async fn never_waits_past_the_elapsed_budget() {
        let start = Instant::now();
        let out: Result<(), ()> = retry(
            &RetryPolicy::new(1000)
                .with_backoff(fixed(300))
                .with_max_elapsed(Duration::from_secs(1)),
            |_| Verdict::Transient,
            |_| {},
            || async { Err(()) },
        )
        .await;
        assert!(out.is_err());
        assert!(
            start.elapsed() <= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(start.elapsed(), Duration::from_millis(900));
    }
}
