//! The consume → apply → flush loop.
//!
//! Messages change the in-memory state of their partition (loaded from MongoDB the first time
//! the partition is seen). Every `flush_interval_ms` (or, when the last flush took longer,
//! after as long as it took), or after `flush_batch_size` messages, the changed state is
//! written with its offsets, the results are derived and written where they differ, and only
//! then are the offsets committed to Kafka. A tick with nothing new writes nothing. While MongoDB fails, the loop retries the flush and does not consume.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _},
    message::BorrowedMessage,
    producer::FutureProducer,
    producer::Producer as _,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Clock,
    kafka::{self, GroupConsumer, RebalanceEvent},
    metrics::AnalyticsMetrics,
    model::{self, Kind},
    results::{self, Rules, Stored},
    retry::retry,
    state::{PartitionState, Touched, View},
    store::{Store, tp_id},
};

/// Next offset of each owned partition, shared with the lag reporter.
pub(crate) type Positions = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// A partition this process consumes.
#[derive(Debug)]
struct Owned {
    topic: String,
    partition: i32,
    state: PartitionState,
    /// The position was checked against MongoDB's offset (and corrected by a seek).
    checked: bool,
}

/// The loop's state.
pub(crate) struct Pipeline {
    pub(crate) consumer: Arc<GroupConsumer>,
    pub(crate) dead_letters: FutureProducer,
    pub(crate) dead_letter_topic: String,
    pub(crate) kinds: HashMap<String, Kind>,
    pub(crate) store: Store,
    pub(crate) metrics: AnalyticsMetrics,
    pub(crate) rules: Rules,
    pub(crate) clock: Clock,
    pub(crate) flush_interval: Duration,
    pub(crate) flush_batch: usize,
    /// Log entries of a partition after which a flush compacts them.
    pub(crate) compact_after: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) positions: Positions,
    parts: BTreeMap<String, Owned>,
    /// The stored state of the partitions this process does not hold.
    others: BTreeMap<String, PartitionState>,
    /// Every partition merged; kept up to date by each flush.
    view: View,
    /// Digests of the result documents in MongoDB.
    stored: Stored,
    /// Stored partition offsets the current results were derived from.
    derived_from: Option<HashMap<String, i64>>,
    /// `stored` may miss another replica's writes (a rebalance happened): read them again
    /// before the next diff, so a document only that replica wrote is not left behind.
    reload_results: bool,
    /// The view must be built again from every partition (one moved into `parts`).
    rebuild: bool,
    /// The minute of the clock at which every product's loss risk was last evaluated.
    risk_minute: i64,
    pending: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("partitions", &self.parts.keys().collect::<Vec<_>>())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    #[expect(clippy::too_many_arguments, reason = "built once, by App::run")]
    pub(crate) fn new(
        consumer: Arc<GroupConsumer>,
        dead_letters: FutureProducer,
        dead_letter_topic: String,
        kinds: HashMap<String, Kind>,
        store: Store,
        metrics: AnalyticsMetrics,
        rules: Rules,
        clock: Clock,
        flush_interval: Duration,
        flush_batch: usize,
        compact_after: usize,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            consumer,
            dead_letters,
            dead_letter_topic,
            kinds,
            store,
            metrics,
            rules,
            clock,
            flush_interval,
            flush_batch,
            compact_after,
            shutdown_timeout,
            positions: Positions::default(),
            parts: BTreeMap::new(),
            others: BTreeMap::new(),
            view: View::default(),
            stored: Stored::default(),
            derived_from: None,
            reload_results: false,
            rebuild: false,
            risk_minute: i64::MIN,
            pending: 0,
        }
    }

    /// Runs until `shutdown`, then flushes what was processed and commits it.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let stored = retry("read results", &shutdown, &self.metrics, || {
            self.store.load_results()
        })
        .await;
        let Some(stored) = stored else { return };
        self.stored = Stored::of(&stored);
        // Results behind the state (a crash after the state was written) are caught up here.
        if !self.flush(&shutdown).await {
            return;
        }
        let consumer = self.consumer.clone();
        let mut due = self.next_flush(Duration::ZERO);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(due) => {
                    let started = Instant::now();
                    self.flush(&shutdown).await;
                    due = self.next_flush(started.elapsed());
                }
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        self.handle(&msg, &shutdown).await;
                        drop(msg);
                        if self.pending >= self.flush_batch {
                            let started = Instant::now();
                            if self.flush(&shutdown).await {
                                due = self.next_flush(started.elapsed());
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "Kafka consumer error"),
                },
            }
        }
        let deadline = CancellationToken::new();
        let guard = deadline.clone();
        let timeout = self.shutdown_timeout;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            guard.cancel();
        });
        let flushed = self.flush(&deadline).await;
        timer.abort();
        if flushed {
            let tpl = self.committable();
            if tpl.count() > 0
                && let Err(err) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(error = %err, "final Kafka commit failed (MongoDB holds the offsets)");
            }
        } else {
            tracing::warn!(
                ?timeout,
                "final flush did not finish; the next start replays it"
            );
        }
        if let Err(err) = self.dead_letters.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %err, "dead-letter producer did not flush");
        }
        tracing::info!(partitions = self.parts.len(), "pipeline stopped");
    }

    /// When the next flush is due after one that took `took`: the interval, or as long as that
    /// flush took if longer. A flush costs about the keys it writes, and keys repeat, so under
    /// a backlog (or a slow MongoDB) batches grow until consuming takes as long as writing,
    /// instead of the writes falling ever further behind; at a steady rate that MongoDB
    /// keeps up with, the interval rules.
    fn next_flush(&self, took: Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.flush_interval.max(took)
    }

    fn apply_rebalance(&mut self) {
        for event in self.consumer.context().take_events() {
            self.reload_results = true;
            if let RebalanceEvent::Revoked(list) = event {
                for (topic, partition) in list {
                    let tp = tp_id(&topic, partition);
                    if let Some(owned) = self.parts.remove(&tp)
                        && owned.state.has_changes()
                    {
                        tracing::info!(%tp, "partition revoked before its last flush; the new owner replays it");
                    }
                    if let Ok(mut p) = self.positions.lock() {
                        p.remove(&(topic.clone(), partition));
                    }
                    let labels = [topic.as_str(), &partition.to_string()];
                    let _ = self.metrics.lag.remove_label_values(&labels);
                }
            }
        }
    }

    /// Applies one message (or dead-letters it), unless MongoDB's state already holds it.
    async fn handle(&mut self, msg: &BorrowedMessage<'_>, stop: &CancellationToken) {
        self.apply_rebalance();
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(&kind) = self.kinds.get(topic) else {
            return;
        };
        let tp = tp_id(topic, partition);
        if !self.parts.contains_key(&tp) {
            let loaded = retry("load partition state", stop, &self.metrics, || {
                self.store.load(&tp)
            })
            .await;
            let Some(state) = loaded else { return };
            tracing::info!(%tp, next = state.next, "partition state loaded");
            // It was among the others' state in the view; the view is built again with it.
            self.others.remove(&tp);
            self.rebuild = true;
            let owned = Owned {
                topic: topic.to_owned(),
                partition,
                state,
                checked: false,
            };
            self.parts.insert(tp.clone(), owned);
        }
        let Some(owned) = self.parts.get_mut(&tp) else {
            return;
        };
        let next = owned.state.next;
        if !owned.checked {
            owned.checked = true;
            if offset != next {
                // Kafka's committed position differs from MongoDB's: MongoDB wins.
                let to = Offset::Offset(next);
                match self
                    .consumer
                    .seek(topic, partition, to, Duration::from_secs(5))
                {
                    Ok(()) => {
                        tracing::info!(%tp, from = offset, to = next, "seeked to MongoDB's offset")
                    }
                    Err(err) => {
                        tracing::warn!(%tp, error = %err, "seek failed; skipping by offset instead")
                    }
                }
                if offset > next {
                    return;
                }
            }
        }
        if !owned.state.is_new(offset) {
            self.metrics
                .messages
                .with_label_values(&[topic, "replayed"])
                .inc();
            return;
        }
        match model::parse(kind, msg.payload()) {
            Ok(input) => {
                owned.state.apply(offset, input);
                self.metrics
                    .messages
                    .with_label_values(&[topic, "applied"])
                    .inc();
            }
            Err(reason) => {
                let (producer, dlq) = (&self.dead_letters, &self.dead_letter_topic);
                let sent = retry("dead-letter", stop, &self.metrics, || {
                    kafka::dead_letter(producer, dlq, msg, &reason)
                })
                .await;
                if sent.is_none() {
                    return;
                }
                tracing::info!(%tp, offset, %reason, "dead-lettered a malformed message");
                owned.state.advance(offset);
                self.metrics.dead_lettered.inc();
                self.metrics
                    .messages
                    .with_label_values(&[topic, "dead_lettered"])
                    .inc();
            }
        }
        self.pending += 1;
    }

    fn committable(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for o in self.parts.values().filter(|o| o.state.stored_next > 0) {
            let _ = tpl.add_partition_offset(
                &o.topic,
                o.partition,
                Offset::Offset(o.state.stored_next),
            );
        }
        tpl
    }

    /// Writes changed state, then changed results, then commits; false if `stop` came first.
    async fn flush(&mut self, stop: &CancellationToken) -> bool {
        self.apply_rebalance();
        let started = Instant::now();
        let mut written = 0;
        let mut changed = false;
        let mut touched = Touched::default();
        let (store, metrics) = (&self.store, &self.metrics);
        for (tp, owned) in self.parts.iter_mut().filter(|(_, o)| o.state.has_changes()) {
            let state = &owned.state;
            let Some(n) = retry("write state", stop, metrics, || store.save(tp, state)).await
            else {
                return false;
            };
            touched.extend(owned.state.mark_stored(n));
            written += n;
            changed = true;
            if owned.state.logged >= self.compact_after {
                let state = &owned.state;
                let Some(n) =
                    retry("compact state", stop, metrics, || store.compact(tp, state)).await
                else {
                    return false;
                };
                tracing::debug!(%tp, keys = n, "log compacted");
                owned.state.mark_compacted();
                written += n;
            }
        }
        let Some(offsets) = retry("read offsets", stop, metrics, || store.offsets()).await else {
            return false;
        };
        self.consumer.context().set_stored_offsets(&offsets);
        let others_changed = match &self.derived_from {
            None => true,
            Some(before) => offsets
                .iter()
                .filter(|(tp, _)| !self.parts.contains_key(*tp))
                .any(|(tp, next)| before.get(tp) != Some(next)),
        };
        let now = self.clock.now();
        let minute = now.timestamp().div_euclid(60);
        let clock_moved = minute != self.risk_minute;
        let changes = if others_changed || self.reload_results || self.rebuild {
            // From scratch: every partition's state, every document compared.
            let mine: Vec<String> = self.parts.keys().cloned().collect();
            let Some(others) =
                retry("read state", stop, metrics, || store.load_others(&mine)).await
            else {
                return false;
            };
            if self.reload_results || !others.is_empty() {
                let Some(docs) =
                    retry("read results", stop, metrics, || store.load_results()).await
                else {
                    return false;
                };
                self.stored = Stored::of(&docs);
                self.reload_results = false;
            }
            self.others = others;
            let all: Vec<&PartitionState> = (self.parts.values().map(|o| &o.state))
                .chain(self.others.values())
                .collect();
            self.view = View::build(&all);
            self.rebuild = false;
            self.risk_minute = minute;
            self.stored
                .diff(results::compute(&self.view, &self.rules, now))
        } else if changed || clock_moved {
            // What this flush's keys affect; every product's risk once a minute.
            let all: Vec<&PartitionState> = (self.parts.values().map(|o| &o.state))
                .chain(self.others.values())
                .collect();
            let affected = self.view.refresh(&touched, &all);
            self.risk_minute = minute;
            results::changes(
                &self.view,
                &affected,
                clock_moved,
                &self.rules,
                now,
                &self.stored,
            )
        } else {
            Vec::new()
        };
        if !changes.is_empty() {
            let Some(n) = retry("write results", stop, metrics, || {
                store.write_results(&changes)
            })
            .await
            else {
                return false;
            };
            self.stored.apply(&changes);
            written += n;
        }
        self.derived_from = Some(offsets);
        if changed {
            let tpl = self.committable();
            if let Err(err) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %err, "Kafka commit failed (MongoDB holds the offsets)");
            }
            if let Ok(mut p) = self.positions.lock() {
                for o in self.parts.values() {
                    p.insert((o.topic.clone(), o.partition), o.state.stored_next);
                }
            }
        }
        if written == 0 && !changed {
            self.metrics.idle_flushes.inc();
        } else {
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.documents_written.inc_by(written as u64);
        }
        self.metrics.last_flush.set(chrono::Utc::now().timestamp());
        self.pending = 0;
        true
    }
}
