//! A worker: reads entries from the stream, stores their events, then acknowledges them.
//!
//! Storing happens before acknowledging, so a crash in between redelivers the entry; the store
//! recognises it (see [`crate::store`]) and neither stores nor counts it again. While Postgres
//! is down the worker retries with capped, jittered backoff and the entries wait in Redis.

use std::{sync::Arc, time::Duration};

use sluice_core::wire::BatchMessage;
use sluice_resilience::{Backoff, Jitter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Result,
    metrics::AggregatorMetrics,
    queue::{Consumer, Entry},
    store::{QueuedBatch, Store, WriteOutcome},
};

/// How often a worker looks for entries abandoned by dead consumers.
const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Everything a worker needs.
#[derive(Debug)]
pub struct Worker {
    pub consumer: Consumer,
    pub store: Arc<Store>,
    pub metrics: AggregatorMetrics,
    /// Which counter row this worker adds to.
    pub shard: i32,
}

impl Worker {
    /// Runs until `shutdown`; the batch in hand is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(consumer = self.consumer.name(), "worker started");
        let mut reader_backoff = redis_backoff().delays();
        let mut own_pending_done = false;
        let mut next_claim = Instant::now();
        while !shutdown.is_cancelled() {
            let read = if !own_pending_done {
                self.consumer
                    .own_pending()
                    .await
                    .inspect(|e| own_pending_done = e.is_empty())
            } else if Instant::now() >= next_claim {
                next_claim = Instant::now() + CLAIM_EVERY;
                self.consumer.claim_stale().await
            } else {
                tokio::select! {
                    read = self.consumer.next_new() => read,
                    () = shutdown.cancelled() => break,
                }
            };
            let entries = match read {
                Ok(entries) => {
                    reader_backoff = redis_backoff().delays();
                    entries
                }
                Err(err) => {
                    let delay = reader_backoff.next().unwrap_or(Duration::from_secs(2));
                    tracing::warn!(error = %err, ?delay, "reading the stream failed; retrying");
                    sleep_or_cancel(delay, &shutdown).await;
                    continue;
                }
            };
            if !entries.is_empty() {
                self.handle(entries, &shutdown).await;
            }
        }
        tracing::info!(consumer = self.consumer.name(), "worker stopped");
    }

    async fn handle(&mut self, entries: Vec<Entry>, shutdown: &CancellationToken) {
        let mut batches = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(&entry) {
                Ok(events) => {
                    ids.push(entry.id.clone());
                    batches.push(QueuedBatch {
                        entry_id: entry.id,
                        events,
                    });
                }
                Err(reason) => self.dead_letter(&entry, &reason).await,
            }
        }
        if batches.is_empty() {
            return;
        }
        let Some(outcome) = self.store_until_done(&batches, shutdown).await else {
            return; // shutting down: the entries stay pending and come back to us or a peer
        };
        self.record(&outcome, batches.len());
        let mut backoff = redis_backoff().with_max_attempts(5).delays();
        loop {
            match self.consumer.ack(&ids).await {
                Ok(()) => break,
                Err(err) => match backoff.next() {
                    Some(delay) => {
                        tracing::warn!(error = %err, "acknowledging failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    // Stored already: a later redelivery is recognised and not counted twice.
                    None => {
                        tracing::warn!(error = %err, "giving up acknowledging; entries will be redelivered");
                        break;
                    }
                },
            }
        }
    }

    /// Writes until it succeeds; `None` if shutdown came first.
    async fn store_until_done(
        &mut self,
        batches: &[QueuedBatch],
        shutdown: &CancellationToken,
    ) -> Option<WriteOutcome> {
        let mut backoff = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5))
            .with_jitter(Jitter::Full)
            .delays();
        loop {
            let started = Instant::now();
            match self.store.write(self.shard, batches).await {
                Ok(outcome) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Some(outcome);
                }
                Err(err) if err.is_permanent() => {
                    tracing::error!(error = %err, "Postgres refused the batch; dead-lettering its entries one by one");
                    return self.store_one_by_one(batches).await;
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %err, ?delay, "storing failed; retrying");
                    if shutdown.is_cancelled() {
                        return None;
                    }
                    sleep_or_cancel(delay, shutdown).await;
                }
            }
        }
    }

    /// After a permanent error: stores the entries that can be stored, dead-letters the rest.
    async fn store_one_by_one(&mut self, batches: &[QueuedBatch]) -> Option<WriteOutcome> {
        let mut total = WriteOutcome::default();
        for batch in batches {
            match self
                .store
                .write(self.shard, std::slice::from_ref(batch))
                .await
            {
                Ok(o) => {
                    total.fresh_entries += o.fresh_entries;
                    total.received += o.received;
                    total.unique += o.unique;
                    total.duplicates += o.duplicates;
                }
                Err(err) if err.is_permanent() => {
                    let entry = Entry {
                        id: batch.entry_id.clone(),
                        payload: BatchMessage::new(batch.events.clone(), None)
                            .to_bytes()
                            .ok(),
                    };
                    self.dead_letter(&entry, &err.to_string()).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "storing failed; the entries stay pending");
                    return None;
                }
            }
        }
        Some(total)
    }

    async fn dead_letter(&mut self, entry: &Entry, reason: &str) {
        tracing::error!(entry_id = %entry.id, %reason, "queue entry cannot be stored; moved to the dead-letter stream");
        match self.consumer.stream().dead_letter(entry, reason).await {
            Ok(()) => self.metrics.dead_lettered.inc(),
            Err(err) => {
                tracing::error!(error = %err, entry_id = %entry.id, "dead-lettering failed; the entry stays pending")
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
