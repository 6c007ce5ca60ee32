//! The admin's system status: the aggregator's counters from Postgres (read-only queries of its
//! tables) and its stream backlog, pending entries and dead letters from Redis.

use deadpool_redis::Pool;
use redis::{Value as RedisValue, streams::StreamRangeReply};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::Result;

/// Latest dead letters shown with their reasons.
const LATEST_DEAD: usize = 5;

/// Reads the aggregator's figures.
#[derive(Clone)]
pub struct SystemReader {
    pg: PgPool,
    redis: Pool,
    stream: String,
    group: String,
}

impl std::fmt::Debug for SystemReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemReader")
            .field("stream", &self.stream)
            .finish()
    }
}

impl SystemReader {
    /// Figures of the aggregator's `stream` and consumer `group`.
    pub fn new(pg: PgPool, redis: Pool, stream: &str, group: &str) -> Self {
        Self {
            pg,
            redis,
            stream: stream.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Counters from Postgres.
    #[tracing::instrument(skip(self))]
    pub async fn aggregator(&self) -> Result<Value> {
        let (received, unique, duplicate): (i64, i64, i64) = sqlx::query_as(
            "SELECT received_count, unique_processed, duplicate_dropped FROM event_stats",
        )
        .fetch_one(&self.pg)
        .await?;
        let topics: i64 = sqlx::query_scalar("SELECT count(*) FROM topics")
            .fetch_one(&self.pg)
            .await?;
        Ok(json!({
            "received": received, "unique_processed": unique,
            "duplicate_dropped": duplicate, "topics": topics,
        }))
    }

    /// Stream length, pending entries, dead letters and the latest reasons from Redis.
    #[tracing::instrument(skip(self))]
    pub async fn streams(&self) -> Result<Value> {
        let dead = format!("{}:dead", self.stream);
        let mut conn = self.redis.get().await?;
        let (length, dead_count, latest): (u64, u64, StreamRangeReply) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("XLEN")
            .arg(&dead)
            .cmd("XREVRANGE")
            .arg(&dead)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(LATEST_DEAD)
            .query_async(&mut *conn)
            .await?;
        // NOGROUP before the aggregator created its group: nothing is pending.
        let pending: RedisValue = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut *conn)
            .await
            .unwrap_or(RedisValue::Nil);
        let pending = match pending {
            RedisValue::Array(parts) => match parts.first() {
                Some(RedisValue::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        let latest: Vec<Value> = latest
            .ids
            .iter()
            .map(|e| {
                let field = |k: &str| e.get::<String>(k).unwrap_or_default();
                json!({"id": e.id, "entry_id": field("entry_id"), "reason": field("reason")})
            })
            .collect();
        Ok(json!({
            "stream": self.stream, "length": length, "pending": pending,
            "dead_letters": dead_count, "latest_dead_letters": latest,
        }))
    }
}
