//! Postgres: each event stored once per (topic, event_id), each queue entry counted once.
//!
//! One transaction per worker round writes, in this order (the same order in every transaction,
//! so concurrent writers cannot deadlock):
//! 1. the queue entry ids into `consumed_entries`, keeping only those not seen before — an entry
//!    redelivered after a crash between COMMIT and XACK is skipped here;
//! 2. the events of the fresh entries, sorted, `ON CONFLICT (topic, event_id) DO NOTHING`: the
//!    rows inserted are the unique events, the rest are duplicates;
//! 3. topics not seen before;
//! 4. this writer's counter row.

use std::{
    collections::HashSet,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_core::Event;
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Error, Result, queue::EntryId};

/// Events read from one queue entry.
#[derive(Debug, Clone)]
pub struct QueuedBatch {
    /// Where they came from: a stream entry id, or `amqp:<message id>`.
    pub entry_id: String,
    pub events: Vec<Event>,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Entries written now (the others had been written before).
    pub fresh_entries: u64,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
}

/// The `/stats` counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    pub received: i64,
    pub unique_processed: i64,
    pub duplicate_dropped: i64,
}

/// JSON text from Postgres, served as it is (not through `serde_json::Value`, which would turn
/// numbers into 64-bit floats).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl TryFrom<String> for RawJson {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::value::RawValue::from_string(text).map(Self)
    }
}

/// An event as `/events` returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub topic: String,
    pub event_id: String,
    pub timestamp: DateTime<Utc>,
    pub source: String,
    /// As Postgres prints the jsonb: numbers exactly as stored.
    #[sqlx(try_from = "String")]
    pub payload: RawJson,
    pub processed_at: DateTime<Utc>,
}

/// The aggregator's Postgres access.
#[derive(Debug)]
pub struct Store {
    /// Writers' pool: workers and the AMQP ingress.
    pool: PgPool,
    /// Readers' pool: `/events` and `/stats`, small and apart so they cannot starve writers.
    read_pool: PgPool,
    known_topics: Mutex<HashSet<String>>,
    /// Set once the migrations are applied; until then every write tries to apply them (the
    /// service may start while Postgres is down).
    migrated: AtomicBool,
}

impl Store {
    /// A pool that connects lazily, so the service starts (and answers `/health` with the
    /// database named) while Postgres is still down.
    pub fn connect_lazy(url: &str, max_connections: u32, max_readers: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e| Error::Config {
            setting: "DATABASE_URL",
            reason: format!("{e}"),
        })?;
        let pool_of = |size: u32| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy_with(options.clone())
        };
        Ok(Self {
            pool: pool_of(max_connections),
            read_pool: pool_of(max_readers),
            known_topics: Mutex::new(HashSet::new()),
            migrated: AtomicBool::new(false),
        })
    }

    /// Applies the migrations in `migrations/` (embedded at build time), under an advisory lock
    /// so replicas starting together take turns. Migrations already applied that this build
    /// does not know (a newer version of another service sharing the database applied them)
    /// are left alone rather than refusing to start.
    #[tracing::instrument(skip(self))]
    pub async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("../../migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// The pool, for health probes and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes the batches in one transaction as described in the module docs.
    pub async fn write(&self, shard: i32, batches: &[QueuedBatch]) -> Result<WriteOutcome> {
        if !self.migrated.load(Ordering::Acquire) {
            self.migrate().await?;
        }
        let mut tx = self.pool.begin().await?;
        let fresh = claim_entries(&mut tx, batches).await?;
        // An id twice in one round (an AMQP message delivered again before the first copy was
        // acknowledged) is stored and counted once, as in two rounds.
        let mut taken = HashSet::new();
        let mut events: Vec<&Event> = batches
            .iter()
            .filter(|b| fresh.contains(&b.entry_id) && taken.insert(b.entry_id.as_str()))
            .flat_map(|b| b.events.iter())
            .collect();
        let received = events.len() as u64;
        events.sort_by(|a, b| (&a.topic, &a.event_id).cmp(&(&b.topic, &b.event_id)));
        events.dedup_by(|a, b| a.topic == b.topic && a.event_id == b.event_id);
        let unique = insert_events(&mut tx, &events).await?;
        let new_topics = self.unknown_topics(&events);
        if !new_topics.is_empty() {
            sqlx::query(
                "INSERT INTO topics (topic) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(&new_topics)
            .execute(&mut *tx)
            .await?;
        }
        let outcome = WriteOutcome {
            fresh_entries: fresh.len() as u64,
            received,
            unique,
            duplicates: received - unique,
        };
        if received > 0 {
            sqlx::query(
                "INSERT INTO event_counters AS c (shard, received, unique_processed, duplicate_dropped)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (shard) DO UPDATE SET
                    received = c.received + EXCLUDED.received,
                    unique_processed = c.unique_processed + EXCLUDED.unique_processed,
                    duplicate_dropped = c.duplicate_dropped + EXCLUDED.duplicate_dropped",
            )
            .bind(shard)
            .bind(received as i64)
            .bind(unique as i64)
            .bind(outcome.duplicates as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.remember_topics(new_topics);
        Ok(outcome)
    }

    fn unknown_topics(&self, events: &[&Event]) -> Vec<String> {
        let known = self
            .known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut new: Vec<String> = events
            .iter()
            .filter(|e| !known.contains(&e.topic))
            .map(|e| e.topic.clone())
            .collect();
        new.sort();
        new.dedup();
        new
    }

    fn remember_topics(&self, topics: Vec<String>) {
        let mut known = self
            .known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        known.extend(topics);
    }

    /// The counters summed over all writers.
    pub async fn counters(&self) -> Result<Counters> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(received), 0)::bigint, coalesce(sum(unique_processed), 0)::bigint,
                    coalesce(sum(duplicate_dropped), 0)::bigint
             FROM event_counters",
        )
        .fetch_one(&self.read_pool)
        .await?;
        Ok(Counters {
            received: row.0,
            unique_processed: row.1,
            duplicate_dropped: row.2,
        })
    }

    /// Every topic seen, sorted.
    pub async fn topics(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT topic FROM topics ORDER BY topic")
                .fetch_all(&self.read_pool)
                .await?,
        )
    }

    /// The latest stored events, newest `processed_at` first.
    pub async fn recent(&self, topic: Option<&str>, limit: i64) -> Result<Vec<StoredEvent>> {
        const COLUMNS: &str = "SELECT topic, event_id, timestamp, source, payload::text AS payload, processed_at FROM processed_events";
        let rows = match topic {
            Some(topic) => {
                sqlx::query_as(&format!(
                    "{COLUMNS} WHERE topic = $1 ORDER BY processed_at DESC, id DESC LIMIT $2"
                ))
                .bind(topic)
                .bind(limit)
                .fetch_all(&self.read_pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "{COLUMNS} ORDER BY processed_at DESC, id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.read_pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// Forgets consumed entries that cannot be delivered again; returns how many.
    ///
    /// A stream entry can come back as long as it is in the stream (pending entries stay in it
    /// until acknowledged), however long ago it was consumed: only ids below `deliverable_from`
    /// (the stream's first entry, from [`crate::queue::Stream::deliverable_from`]) are
    /// forgotten, and none when the stream's state is unknown. AMQP message ids (`amqp:…`) can
    /// be sent again by a producer at any time; they are kept for `amqp_retention`.
    pub async fn prune_consumed(
        &self,
        deliverable_from: Option<EntryId>,
        amqp_retention: Duration,
    ) -> Result<u64> {
        let mut pruned = 0;
        if let Some(bound) = deliverable_from {
            // Whole milliseconds below the bound's: ids of the bound's own millisecond stay
            // (a few rows), which keeps the comparison a simple one on the first part.
            let ms = i64::try_from(bound.ms).unwrap_or(i64::MAX);
            pruned += sqlx::query(
                "DELETE FROM consumed_entries
                 WHERE entry_id ~ '^[0-9]{1,18}-[0-9]+$'
                   AND split_part(entry_id, '-', 1)::bigint < $1",
            )
            .bind(ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        pruned += sqlx::query(
            "DELETE FROM consumed_entries
             WHERE entry_id LIKE 'amqp:%' AND consumed_at < now() - $1::interval",
        )
        .bind(format!("{} seconds", amqp_retention.as_secs()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(pruned)
    }

    /// `SELECT 1`, for `/health`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read_pool).await?;
        Ok(())
    }
}

async fn claim_entries(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[QueuedBatch],
) -> Result<HashSet<String>> {
    let mut ids: Vec<&str> = batches.iter().map(|b| b.entry_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO consumed_entries (entry_id) SELECT unnest($1::text[])
         ON CONFLICT DO NOTHING RETURNING entry_id",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(fresh.into_iter().collect())
}

async fn insert_events(tx: &mut Transaction<'_, Postgres>, events: &[&Event]) -> Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let n = events.len();
    let (mut topics, mut ids, mut sources) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut times, mut payloads) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for e in events {
        topics.push(e.topic.as_str());
        ids.push(e.event_id.as_str());
        sources.push(e.source.as_str());
        times.push(e.timestamp);
        payloads.push(e.payload.get());
    }
    let result = sqlx::query(
        "INSERT INTO processed_events (topic, event_id, source, timestamp, payload)
         SELECT t, e, s, ts, p::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) AS u(t, e, s, ts, p)
         ON CONFLICT (topic, event_id) DO NOTHING",
    )
    .bind(&topics)
    .bind(&ids)
    .bind(&sources)
    .bind(&times)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> Event {
        let v = serde_json::json!({"topic": topic, "event_id": "1", "source": "s",
                                   "timestamp": "2025-01-01T00:00:00Z"});
        Event::from_json(&v, None).expect("valid")
    }

    #[tokio::test]
    async fn only_topics_not_seen_yet_are_written_each_once() {
        // A lazy pool never connects until used: no database needed here.
        let store = Store::connect_lazy("postgres://nobody@127.0.0.1:1/none", 1, 1).expect("store");
        let (a, b) = (event("a"), event("b"));
        assert_eq!(store.unknown_topics(&[&b, &a, &b]), ["a", "b"]);
        store.remember_topics(vec!["a".into()]);
        assert_eq!(store.unknown_topics(&[&a, &b]), ["b"]);
    }

    #[test]
    fn a_bad_database_url_names_the_setting() {
        let err = Store::connect_lazy("not a url", 1, 1).expect_err("invalid");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn stored_payloads_are_served_as_the_text_postgres_printed() {
        let raw = RawJson::try_from(r#"{"n": 1.50}"#.to_owned()).expect("json");
        assert_eq!(serde_json::to_string(&raw).expect("json"), r#"{"n": 1.50}"#);
        assert!(RawJson::try_from("{".to_owned()).is_err());
    }
}
