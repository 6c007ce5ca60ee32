//! A worker: reads entries from the stream, stores their events, then acknowledges them.
//!
//! Storing happens before acknowledging, so a crash in between redelivers the entry; the store
//! recognises it (see [`crate::store`]) and neither stores nor counts it again. An entry is
//! acknowledged only once it is stored or moved to the dead-letter stream, never otherwise.
//!
//! What a failed write leads to depends on why it failed ([`WriteFailure`]):
//! - Postgres unreachable: retry with capped, jittered backoff for as long as it takes; the
//!   entries wait in Redis, and the worker keeps them claimed so peers do not take them over.
//! - Postgres refused the data: the round is stored entry by entry and the refused entries are
//!   dead-lettered with the reason.
//! - Postgres failed the statement otherwise (a statement timeout on a huge round, a trigger):
//!   a few retries, then the same split; an entry that still fails alone is dead-lettered.
//!   An entry delivered more than [`SPLIT_AFTER_DELIVERIES`] times (workers died holding it) is
//!   treated the same way from the start, so one poison entry cannot stall every replica.

use std::{sync::Arc, time::Duration};

use sluice_core::wire::BatchMessage;
use sluice_resilience::{Backoff, Jitter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    error::WriteFailure,
    metrics::AggregatorMetrics,
    queue::{self, Consumer, Entry},
    store::{QueuedBatch, Store, WriteOutcome},
};

/// How often a worker looks for entries abandoned by dead consumers.
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// Statement failures of a whole round before it is split into single entries.
const ROUND_ATTEMPTS: u32 = 3;
/// Statement failures of a single entry before it is dead-lettered.
const ENTRY_ATTEMPTS: u32 = 3;
/// Deliveries of an entry after which its round is split at once.
pub const SPLIT_AFTER_DELIVERIES: u64 = 3;

/// Everything a worker needs.
#[derive(Debug)]
pub struct Worker {
    pub consumer: Consumer,
    pub store: Arc<Store>,
    pub metrics: AggregatorMetrics,
    /// Which counter row this worker adds to.
    pub shard: i32,
    /// Entries idle this long may be claimed by peers; the worker refreshes its own sooner.
    pub claim_idle: Duration,
    /// Most events written in one transaction (see [`rounds`]).
    pub round_events: usize,
}

/// How a round of entries came to this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    First,
    /// Read again (own pending entries after a restart, or claimed from a dead peer).
    Again,
}

/// The end of an attempt to write some entries.
enum Attempt {
    Written(WriteOutcome),
    /// Refused for good (or after the allowed statement failures), with the last error.
    Refused(Error),
    Cancelled,
}

impl Worker {
    /// Runs until `shutdown`; the batch in hand is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(consumer = self.consumer.name(), "worker started");
        let mut reader_backoff = redis_backoff().delays();
        let mut own_pending_done = false;
        let mut next_claim = Instant::now();
        while !shutdown.is_cancelled() {
            let (read, delivery) = if !own_pending_done {
                let read = self.consumer.own_pending().await;
                own_pending_done = read.as_ref().is_ok_and(Vec::is_empty);
                (read, Delivery::Again)
            } else if Instant::now() >= next_claim {
                next_claim = Instant::now() + CLAIM_EVERY;
                (self.consumer.claim_stale().await, Delivery::Again)
            } else {
                tokio::select! {
                    read = self.consumer.next_new() => (read, Delivery::First),
                    () = shutdown.cancelled() => break,
                }
            };
            let entries = match read {
                Ok(entries) => {
                    reader_backoff = redis_backoff().delays();
                    entries
                }
                Err(err) => {
                    if queue::is_nogroup(&err) {
                        self.recreate_group().await;
                    }
                    let delay = reader_backoff.next().unwrap_or(Duration::from_secs(2));
                    tracing::warn!(error = %err, ?delay, "reading the stream failed; retrying");
                    sleep_or_cancel(delay, &shutdown).await;
                    continue;
                }
            };
            if !entries.is_empty() {
                self.handle(entries, delivery, &shutdown).await;
            }
        }
        tracing::info!(consumer = self.consumer.name(), "worker stopped");
    }

    /// Redis lost the stream and its group (restart without persistence, FLUSHALL, eviction):
    /// create them again so the workers read what `/publish` appends from now on.
    async fn recreate_group(&mut self) {
        match self.consumer.stream().ensure_group().await {
            Ok(created) => {
                if created {
                    self.metrics.group_recreated.inc();
                }
                tracing::error!(
                    stream = self.consumer.stream().key(),
                    "the consumer group was missing (Redis lost its data?); created it again"
                );
            }
            Err(err) => tracing::warn!(error = %err, "creating the consumer group failed"),
        }
    }

    async fn handle(
        &mut self,
        entries: Vec<Entry>,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let mut batches = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(&entry) {
                Ok(events) => batches.push(QueuedBatch {
                    entry_id: entry.id,
                    events,
                }),
                Err(reason) => self.dead_letter(&entry.id, entry.payload, &reason).await,
            }
        }
        // Rounds in hand are finished at shutdown too: each is a short transaction, and an
        // outage cancels them (see `write`).
        for round in rounds(batches, self.round_events) {
            self.store_round(round, delivery, shutdown).await;
        }
    }

    /// Stores one round (or dead-letters what cannot be stored), then acknowledges it.
    async fn store_round(
        &mut self,
        batches: Vec<QueuedBatch>,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let split = delivery == Delivery::Again && self.delivered_often(&batches).await;
        let stored = if split {
            self.store_one_by_one(&batches, shutdown).await
        } else {
            match self.write(&batches, ROUND_ATTEMPTS, shutdown).await {
                Attempt::Written(outcome) => {
                    self.record(&outcome, batches.len());
                    batches.iter().map(|b| b.entry_id.clone()).collect()
                }
                Attempt::Refused(err) => {
                    tracing::error!(error = %err, entries = batches.len(), "Postgres keeps refusing the round; storing its entries one by one");
                    self.metrics.rounds_split.inc();
                    self.store_one_by_one(&batches, shutdown).await
                }
                // Shutting down: the entries stay pending and come back to us or a peer.
                Attempt::Cancelled => return,
            }
        };
        self.ack(&stored).await;
    }

    /// Whether any entry of the round was delivered more than [`SPLIT_AFTER_DELIVERIES`] times.
    async fn delivered_often(&mut self, batches: &[QueuedBatch]) -> bool {
        let ids: Vec<String> = batches.iter().map(|b| b.entry_id.clone()).collect();
        match self.consumer.deliveries(&ids).await {
            Ok(counts) => {
                let most = counts.into_iter().max().unwrap_or(0);
                if most > SPLIT_AFTER_DELIVERIES {
                    tracing::warn!(
                        deliveries = most,
                        "an entry of this round was delivered again and again; storing entry by entry"
                    );
                }
                most > SPLIT_AFTER_DELIVERIES
            }
            Err(err) => {
                tracing::warn!(error = %err, "reading delivery counts failed");
                false
            }
        }
    }

    /// Stores the entries that can be stored and dead-letters the rest; returns the ids of
    /// those stored (dead-lettered ones are acknowledged by the dead-letter move itself).
    async fn store_one_by_one(
        &mut self,
        batches: &[QueuedBatch],
        shutdown: &CancellationToken,
    ) -> Vec<String> {
        let mut stored = Vec::with_capacity(batches.len());
        for batch in batches {
            match self
                .write(std::slice::from_ref(batch), ENTRY_ATTEMPTS, shutdown)
                .await
            {
                Attempt::Written(outcome) => {
                    self.record(&outcome, 1);
                    stored.push(batch.entry_id.clone());
                }
                Attempt::Refused(err) => {
                    let payload = BatchMessage::new(batch.events.clone(), None)
                        .to_bytes()
                        .ok();
                    self.dead_letter(&batch.entry_id, payload, &err.reason())
                        .await;
                }
                Attempt::Cancelled => break,
            }
        }
        stored
    }

    /// Writes `batches` in one transaction: retries outages until shutdown, gives up after
    /// `attempts` statement failures or at once when the data is refused.
    async fn write(
        &mut self,
        batches: &[QueuedBatch],
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Attempt {
        let ids: Vec<String> = batches.iter().map(|b| b.entry_id.clone()).collect();
        let mut backoff = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5))
            .with_jitter(Jitter::Full)
            .delays();
        let mut failures = 0;
        let mut claimed_at = Instant::now();
        loop {
            let started = Instant::now();
            let err = match self.store.write(self.shard, batches).await {
                Ok(outcome) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Attempt::Written(outcome);
                }
                Err(err) => err,
            };
            match err.write_failure() {
                WriteFailure::Refused => return Attempt::Refused(err),
                WriteFailure::Statement => {
                    failures += 1;
                    if failures >= attempts {
                        return Attempt::Refused(err);
                    }
                    tracing::warn!(error = %err, failures, "Postgres failed the statement; retrying");
                }
                WriteFailure::Outage => tracing::warn!(error = %err, "storing failed; retrying"),
            }
            if shutdown.is_cancelled() {
                return Attempt::Cancelled;
            }
            // Still working on these: keep peers from claiming them while we wait.
            if claimed_at.elapsed() >= self.claim_idle / 2 {
                claimed_at = Instant::now();
                if let Err(err) = self.consumer.keep_alive(&ids).await {
                    tracing::debug!(error = %err, "refreshing the claim on our entries failed");
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            sleep_or_cancel(delay, shutdown).await;
        }
    }

    /// Acknowledges stored entries. If that keeps failing they are redelivered later and the
    /// store recognises them, so nothing is counted twice.
    async fn ack(&mut self, ids: &[String]) {
        let mut backoff = redis_backoff().with_max_attempts(5).delays();
        loop {
            match self.consumer.ack(ids).await {
                Ok(()) => return,
                Err(err) => match backoff.next() {
                    Some(delay) => {
                        tracing::warn!(error = %err, "acknowledging failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        tracing::warn!(error = %err, "giving up acknowledging; entries will be redelivered");
                        return;
                    }
                },
            }
        }
    }

    /// Moves an entry to the dead-letter stream. If that fails the entry stays pending (it is
    /// not acknowledged) and comes back through a claim.
    async fn dead_letter(&mut self, entry_id: &str, payload: Option<Vec<u8>>, reason: &str) {
        tracing::error!(%entry_id, %reason, "queue entry cannot be stored; moving it to the dead-letter stream");
        let entry = Entry {
            id: entry_id.to_owned(),
            payload,
        };
        match self.consumer.stream().dead_letter(&entry, reason).await {
            Ok(()) => self.metrics.dead_lettered.inc(),
            Err(err) => {
                self.metrics.dead_letter_failures.inc();
                tracing::error!(error = %err, %entry_id, "dead-lettering failed; the entry stays pending");
            }
        }
    }

    fn record(&self, outcome: &WriteOutcome, entries: usize) {
        let m = &self.metrics;
        m.received.inc_by(outcome.received);
        m.unique.inc_by(outcome.unique);
        m.duplicates.inc_by(outcome.duplicates);
        m.redelivered.inc_by(entries as u64 - outcome.fresh_entries);
        m.batch_size.observe(outcome.received as f64);
    }
}

/// The batches in rounds of at most `max_events` events, in order; a batch larger than that
/// is a round of its own.
fn rounds(batches: Vec<QueuedBatch>, max_events: usize) -> Vec<Vec<QueuedBatch>> {
    let mut out: Vec<Vec<QueuedBatch>> = Vec::new();
    let mut events = 0;
    for batch in batches {
        let n = batch.events.len();
        match out.last_mut() {
            Some(round) if events + n <= max_events => round.push(batch),
            _ => {
                out.push(vec![batch]);
                events = 0;
            }
        }
        events += n;
    }
    out
}

/// The events of an entry, or why it cannot be read.
fn decode(entry: &Entry) -> Result<Vec<sluice_core::Event>, String> {
    let payload = entry.payload.as_deref().ok_or("entry has no batch field")?;
    BatchMessage::from_bytes(payload)
        .map(BatchMessage::into_events)
        .map_err(|e| format!("undecodable batch: {e}"))
}

fn redis_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
        .with_jitter(Jitter::Full)
}

async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: Option<&str>) -> Entry {
        Entry {
            id: "1-0".into(),
            payload: payload.map(|p| p.as_bytes().to_vec()),
        }
    }

    fn batch(id: &str, events: usize) -> QueuedBatch {
        let event = sluice_core::Event::from_json(
            &serde_json::json!({"topic": "t", "event_id": "1", "source": "s",
                                "timestamp": "2025-01-01T00:00:00Z"}),
            None,
        )
        .expect("valid");
        QueuedBatch {
            entry_id: id.into(),
            events: vec![event; events],
        }
    }

    #[test]
    fn rounds_keep_the_order_and_never_split_an_entry() {
        let batches = vec![
            batch("a", 600),
            batch("b", 600),
            batch("c", 900),
            batch("d", 2_500),
            batch("e", 1),
        ];
        let ids: Vec<Vec<String>> = rounds(batches, 2_000)
            .iter()
            .map(|r| r.iter().map(|b| b.entry_id.clone()).collect())
            .collect();
        assert_eq!(ids, [vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        assert!(rounds(Vec::new(), 10).is_empty());
    }

    #[test]
    fn decodes_a_batch_and_names_why_an_entry_cannot_be_read() {
        let batch = r#"{"v":"1","events":[{"topic":"t","event_id":"1","source":"s",
            "timestamp":"2025-01-01T00:00:00Z","payload":{"n":1.50}}]}"#;
        let events = decode(&entry(Some(batch))).expect("decodes");
        assert_eq!(
            events[0].payload.get(),
            r#"{"n":1.50}"#,
            "payload kept as sent"
        );
        assert_eq!(
            decode(&entry(None)).expect_err("no field"),
            "entry has no batch field"
        );
        for bad in ["not json", r#"{"v":"9","events":[]}"#, r#"{"v":"1"}"#] {
            let reason = decode(&entry(Some(bad))).expect_err(bad);
            assert!(reason.starts_with("undecodable batch:"), "{reason}");
        }
    }
}
