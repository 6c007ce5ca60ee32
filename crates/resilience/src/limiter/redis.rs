//! GCRA shared through Redis: one atomic Lua script per request, on Redis server time, so
//! every process sees the same clock and the same state.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};

use super::interval;
use crate::{Error, Result};

/// GCRA: the key holds the theoretical arrival time (TAT, µs of Redis server time). A request
/// of `cost` is admitted when the TAT it would set is at most `burst` intervals ahead of now.
/// Returns `{1, 0}` when admitted, `{0, µs until it would be}` otherwise. `string.format('%d')`
/// keeps all 16 digits (plain number-to-string conversion in Redis' Lua keeps only 14).
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval * cost
local limit = now + interval * burst
if new_tat > limit then
  return {0, new_tat - limit}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

/// What the limiter answers when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Admit the request: availability over the limit (for limits that protect nothing vital).
    Open,
    /// Refuse with [`Error::StoreUnavailable`]: the limit over availability (for limits that
    /// protect a fragile dependency or a paid API).
    Closed,
}

/// A rate limit shared by every process using the same Redis and key.
///
/// ```no_run
/// use sluice_resilience::{FailureMode, RedisLimiter};
///
/// # async fn t() -> anyhow::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let limiter = RedisLimiter::new(conn, "sluice:ratelimit:publish:", 500.0, 50)?
///     .with_failure_mode(FailureMode::Open);
/// match limiter.check("client-42").await {
///     Ok(()) => { /* serve */ }
///     Err(refused) => { /* 429 with Retry-After: refused.retry_after() */ }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Arc<Script>,
    prefix: String,
    interval_us: u64,
    burst: u32,
    failure_mode: FailureMode,
    timeout: Duration,
    store_failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .field("failure_mode", &self.failure_mode)
            .finish()
    }
}

impl RedisLimiter {
    /// `rate_per_sec` and `burst` per key; keys are `prefix` + the name given to `check`.
    /// Fails open, and gives Redis 250 ms to answer, unless told otherwise.
    pub fn new(
        conn: ConnectionManager,
        prefix: impl Into<String>,
        rate_per_sec: f64,
        burst: u32,
    ) -> Result<Self> {
        let interval = interval(rate_per_sec, burst)?;
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            conn,
            script: Arc::new(Script::new(GCRA)),
            prefix: prefix.into(),
            interval_us,
            burst,
            failure_mode: FailureMode::Open,
            timeout: Duration::from_millis(250),
            store_failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// What to answer when Redis fails or is slower than the timeout.
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// How long to wait for Redis before applying the failure mode.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Admits one request for `key`.
    pub async fn check(&self, key: &str) -> Result<()> {
        self.check_n(key, 1).await
    }

    /// Admits a request costing `cost` units (e.g. a batch of events).
    pub async fn check_n(&self, key: &str, cost: u32) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(self.interval_us).arg(self.burst).arg(cost);
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u8, u64)>(&mut conn),
        )
        .await;
        let failure = match answer {
            Ok(Ok((1, _))) => return Ok(()),
            Ok(Ok((_, wait_us))) => {
                return Err(Error::RateLimited {
                    retry_after: Duration::from_micros(wait_us),
                });
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = %failure, mode = ?self.failure_mode, "rate limiter store unavailable");
        match self.failure_mode {
            FailureMode::Open => Ok(()),
            FailureMode::Closed => Err(Error::StoreUnavailable { reason: failure }),
        }
    }

    /// How often Redis could not be asked, since start.
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }
}
