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
use crate::{Error, Result, error::LONGEST_WAIT};

/// GCRA: the key holds the theoretical arrival time (TAT) as `"<seconds> <nanoseconds>"` of Redis
/// server time. A request of `cost` is admitted when the TAT it would set is at most `burst`
/// intervals ahead of now. Returns `{1, 0}` when admitted, `{0, ns until it would be}` otherwise.
///
/// The interval is in nanoseconds: in whole µs, 300,000/s (3.33 µs) became 3 µs and the limit
/// ran 11 % fast. Lua numbers are doubles, exact only to 2^53, and nanoseconds since the epoch
/// (~1.7e18) are beyond that; so the script computes in ns only how far the TAT is *ahead of
/// now*, which is at most `burst` intervals, and stores seconds and nanoseconds apart.
/// `string.format('%d')` writes every digit (plain number-to-string conversion in Redis' Lua
/// keeps only 14). A value in another format (the µs of an earlier version) reads as no TAT.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local s, ns = string.match(stored, '^(%d+) (%d+)$')
  if s then
    ahead = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_ns)
    if ahead < 0 then ahead = 0 end
  end
end
local new_ahead = ahead + interval * cost
local limit = interval * burst
if new_ahead > limit then
  return {0, new_ahead - limit}
end
local at_ns = now_ns + new_ahead
local tat_s = now_s + math.floor(at_ns / 1000000000)
local tat_ns = at_ns % 1000000000
redis.call('SET', KEYS[1], string.format('%d %d', tat_s, tat_ns), 'PX', math.ceil(new_ahead / 1000000) + 1)
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
    interval_ns: u64,
    burst: u32,
    failure_mode: FailureMode,
    timeout: Duration,
    store_failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("interval_ns", &self.interval_ns)
            .field("burst", &self.burst)
            .field("failure_mode", &self.failure_mode)
            .finish()
    }
}

impl RedisLimiter {
    /// `rate_per_sec` and `burst` per key; keys are `prefix` + the name given to `check`.
    /// A full burst must drain within 365 days (`burst / rate_per_sec`). Fails open, and gives
    /// Redis 250 ms to answer, unless told otherwise.
    pub fn new(
        conn: ConnectionManager,
        prefix: impl Into<String>,
        rate_per_sec: f64,
        burst: u32,
    ) -> Result<Self> {
        let interval = interval(rate_per_sec, burst)?;
        // The script keeps the TAT's distance from now in a Lua double, and the key's expiry in
        // ms: bounding the burst's length keeps both exact enough and within Redis' range.
        match interval.checked_mul(burst) {
            Some(length) if length <= LONGEST_WAIT => {}
            _ => {
                return Err(Error::invalid(
                    "burst",
                    format!("{burst} at {rate_per_sec}/s takes longer than 365 days to drain"),
                ));
            }
        }
        // Cannot fail: at most 365 days in ns (3.2e16).
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            conn,
            script: Arc::new(Script::new(GCRA)),
            prefix: prefix.into(),
            interval_ns,
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

    /// Admits a request costing `cost` units (e.g. a batch of events). A cost above the burst
    /// can never be admitted: [`Error::CostAboveBurst`], without asking Redis.
    pub async fn check_n(&self, key: &str, cost: u32) -> Result<()> {
        if cost > self.burst {
            return Err(Error::CostAboveBurst {
                cost,
                burst: self.burst,
            });
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(self.interval_ns).arg(self.burst).arg(cost);
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u8, u64)>(&mut conn),
        )
        .await;
        let failure = match answer {
            Ok(Ok((1, _))) => return Ok(()),
            Ok(Ok((_, wait_ns))) => {
                return Err(Error::RateLimited {
                    retry_after: Duration::from_nanos(wait_ns),
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
