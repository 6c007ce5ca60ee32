//! The consume → apply → flush loop.
//!
//! Messages change the in-memory state of their partition (loaded from MongoDB the first time
//! the partition is seen). Every `flush_interval_ms` (or, when the last flush took longer,
//! after as long as it took), or after `flush_batch_size` messages or `flush_max_keys`
//! changed keys, the changed state is written with its offsets, the results are derived and
//! written where they differ, and only then are the offsets committed to Kafka. A tick with
//! nothing new writes nothing. Consuming goes on while a flush writes (up to as many messages
//! and changed keys ahead); once that flush's writes fail, the loop retries them and does not
//! consume.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt as _, StreamExt as _, future::OptionFuture};
use mongodb::bson::RawDocumentBuf;
use prometheus::IntCounter;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _},
    message::BorrowedMessage,
    producer::FutureProducer,
    producer::Producer as _,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Clock, Result,
    kafka::{self, GroupConsumer, RebalanceEvent},
    metrics::AnalyticsMetrics,
    model::{self, Kind},
    packed::Packed,
    results::{self, Change, Rules, Stored},
    retry::retry,
    state::{PartitionState, StoredDocuments, Touched, View},
    store::{self, Store, tp_id},
};

/// Next offset of each owned partition, shared with the lag reporter.
pub(crate) type Positions = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// A partition this process consumes.
#[derive(Debug)]
struct Owned {
    topic: String,
    partition: i32,
    state: PartitionState,
    /// First offset whose processing is not durable in MongoDB yet (what Kafka may commit).
    durable: i64,
    /// The position was checked against MongoDB's offset (and corrected by a seek).
    checked: bool,
    /// Which load of the partition this is (see [`Pipeline::loads`]).
    loaded: u64,
}

/// Whether a partition's position is settled once its first message, at `offset`, was
/// compared with MongoDB's `next` and a seek to `next` was tried where they differ (`seeked`:
/// it worked, or none was needed). Behind MongoDB it always is: replayed offsets are skipped one
/// by one. Ahead of it only a seek settles it, or the messages in between would never be
/// applied; until then each message is dropped and tries the seek again.
fn position_settled(offset: i64, next: i64, seeked: bool) -> bool {
    offset < next || seeked
}

/// What one partition's flush writes, prepared from its state in memory.
#[derive(Debug)]
struct PartWrite {
    tp: String,
    /// The load of the partition it was prepared from.
    loaded: u64,
    next: i64,
    entries: Packed,
    /// The compaction to start once these entries are stored.
    compaction: Option<Compaction>,
}

/// A snapshot of a partition's state at offset `next`, to replace its log with.
#[derive(Debug)]
struct Compaction {
    tp: String,
    next: i64,
    /// The snapshot's documents ([`store::snapshot`]).
    documents: Vec<RawDocumentBuf>,
    keys: usize,
    /// The stored documents it replaces, deleted once it is stored: those known when it was
    /// taken, and its flush's log documents.
    replaces: StoredDocuments,
}

/// The writes of one flush: prepared while consuming waits, done while it goes on.
#[derive(Debug)]
struct Writes {
    parts: Vec<PartWrite>,
    changes: Vec<Change>,
    messages: usize,
    started: Instant,
    /// How long preparing it took (consuming waits meanwhile).
    prepared: Duration,
}

/// What a finished flush wrote.
#[derive(Debug)]
struct Written {
    writes: Writes,
    /// The log documents written, by partition.
    logged: Vec<Vec<String>>,
    documents: usize,
    state_took: Duration,
}

/// Who writes to MongoDB next: a flush's writes hold it throughout, a compaction one step at
/// a time. The lock is fair (first come, first served), so a flush waits for one compaction
/// step at most, and a compaction still gets a step in between two flushes.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// Does the writes in order: each partition's log entries and offset, then the results;
/// `None` once `stop` came first. Sets `failing` at the first failed attempt.
async fn write(
    store: Store,
    metrics: AnalyticsMetrics,
    stop: CancellationToken,
    turn: Turn,
    failing: Arc<AtomicBool>,
    writes: Writes,
) -> Option<Written> {
    let _turn = turn.lock().await;
    let noted = |failed: bool| {
        if failed {
            failing.store(true, Ordering::Relaxed);
        }
    };
    let (mut documents, mut logged) = (0, Vec::with_capacity(writes.parts.len()));
    for w in &writes.parts {
        let entries = &w.entries;
        let ids = retry("write state", &stop, &metrics, || {
            (store.save_entries(&w.tp, w.next, entries)).inspect(|r| noted(r.is_err()))
        })
        .await?;
        documents += entries.len();
        logged.push(ids);
    }
    let state_took = writes.started.elapsed();
    if !writes.changes.is_empty() {
        let changes = &writes.changes;
        documents += retry("write results", &stop, &metrics, || {
            (store.write_results(changes)).inspect(|r| noted(r.is_err()))
        })
        .await?;
    }
    Some(Written {
        writes,
        logged,
        documents,
        state_took,
    })
}

/// Documents a compaction deletes in one step (one turn at MongoDB): a log document holds
/// up to 10,000 entries, and deleting one took ~20 ms against the test server.
const DELETE_STEP: usize = 2;

/// What the steps of a compaction share.
struct Steps<'a> {
    stop: &'a CancellationToken,
    metrics: &'a AnalyticsMetrics,
    turn: &'a Turn,
}

impl Steps<'_> {
    /// `op` in a turn of its own, retried until it succeeds; `None` once `stop` came.
    async fn run<T, Fut>(&self, what: &str, op: impl Fn() -> Fut) -> Option<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        retry(what, self.stop, self.metrics, || async {
            let _turn = self.turn.lock().await;
            op().await
        })
        .await
    }
}

/// Stores a partition's snapshot, moves its head, then deletes the log and the snapshots it
/// replaces ([`Store::save_snapshot`], [`Store::set_head`], [`Store::delete`]), retrying each step until it is done or `stop` comes; `Some` once
/// done.
///
/// It runs beside the flushes, not in one, and yields to them step by step: the results of
/// the messages that arrive meanwhile must not wait for it. That is safe because the
/// snapshot is of the state at its own offset, and only what it covers is deleted, once all
/// of it is stored.
async fn compact(
    store: Store,
    metrics: AnalyticsMetrics,
    stop: CancellationToken,
    turn: Turn,
    c: Compaction,
) -> Option<()> {
    let steps = Steps {
        stop: &stop,
        metrics: &metrics,
        turn: &turn,
    };
    let started = Instant::now();
    for document in &c.documents {
        (steps.run("write snapshot", || store.save_snapshot(document))).await?;
    }
    (steps.run("move the head", || store.set_head(&c.tp, c.next))).await?;
    for (log, ids) in [(true, &c.replaces.log), (false, &c.replaces.state)] {
        for ids in ids.chunks(DELETE_STEP) {
            (steps.run("delete the compacted log", || store.delete(log, ids))).await?;
        }
    }
    let took = started.elapsed();
    let keys = c.keys;
    tracing::debug!(tp = %c.tp, keys, took_ms = took.as_millis() as u64, "log compacted");
    metrics.compaction_seconds.observe(took.as_secs_f64());
    metrics.documents_written.inc_by(keys as u64);
    Some(())
}

/// Messages taken from the consumer's queue in one go, without returning to the loop's
/// `select!` (which sets up its timer and waits for each one).
const DRAIN: usize = 1024;

/// One input's message counters, looked up once (not by label on every message).
#[derive(Debug)]
struct Counted {
    applied: IntCounter,
    replayed: IntCounter,
    dead_lettered: IntCounter,
}

impl Counted {
    fn new(metrics: &AnalyticsMetrics, topic: &str) -> Self {
        let counter = |outcome| metrics.messages.with_label_values(&[topic, outcome]);
        Self {
            applied: counter("applied"),
            replayed: counter("replayed"),
            dead_lettered: counter("dead_lettered"),
        }
    }
}

/// A flush whose writes are under way.
struct Job {
    writes: JoinHandle<Option<Written>>,
    /// Set once one of its writes failed: consuming waits for it from then on.
    failing: Arc<AtomicBool>,
}

impl Job {
    fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
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
    /// Changed keys that start a flush (and that consuming may change ahead of one).
    pub(crate) flush_keys: usize,
    /// Log entries of a partition after which a flush compacts them.
    pub(crate) compact_after: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) positions: Positions,
    parts: BTreeMap<String, Owned>,
    /// Each input partition's id (`topic|partition`), made once.
    tp_ids: HashMap<(Kind, i32), String>,
    counted: HashMap<Kind, Counted>,
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
    /// Partitions loaded so far, to tell a partition's loads apart.
    loads: u64,
    /// Messages applied so far: the [`Arrival`](crate::state::Arrival) of the next one.
    arrivals: u64,
    /// The minute of the clock at which every product's loss risk was last evaluated.
    risk_minute: i64,
    pending: usize,
    /// Stops writes, and retrying them, at the shutdown deadline: one under way may finish.
    writes_stop: CancellationToken,
    /// Taken by each flush's writes and each step of a compaction.
    turn: Turn,
    /// The log compaction under way, if any; `Some` once done.
    compacting: Option<JoinHandle<Option<()>>>,
    /// False once a compaction ended undone (see [`Pipeline::may_compact`]).
    compactions_work: bool,
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
        flush_keys: usize,
        compact_after: usize,
        shutdown_timeout: Duration,
    ) -> Self {
        let counted = (kinds.iter())
            .map(|(topic, &kind)| (kind, Counted::new(&metrics, topic)))
            .collect();
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
            flush_keys,
            compact_after,
            shutdown_timeout,
            positions: Positions::default(),
            parts: BTreeMap::new(),
            tp_ids: HashMap::new(),
            counted,
            others: BTreeMap::new(),
            view: View::default(),
            stored: Stored::default(),
            derived_from: None,
            reload_results: false,
            rebuild: false,
            risk_minute: i64::MIN,
            loads: 0,
            arrivals: 0,
            pending: 0,
            writes_stop: CancellationToken::new(),
            turn: Turn::default(),
            compacting: None,
            compactions_work: true,
        }
    }

    /// Runs until `shutdown`, then flushes what was processed and commits it.
    ///
    /// A flush is prepared from the state in memory (which keys to log, which documents
    /// changed) while consuming waits; its writes then run while consuming goes on, up to
    /// `flush_batch` messages or `flush_keys` changed keys ahead, unless they meet a MongoDB
    /// failure (then consuming waits for them). The next flush starts once they are done and
    /// the interval has passed (or a full batch waits), so under a backlog a batch holds what
    /// arrived while the last one was written, and a key repeated within it is written once:
    /// what a flush holds and writes follows the keys it changed, not the messages.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let stored = retry("read results", &shutdown, &self.metrics, || {
            self.store.load_digests()
        })
        .await;
        let Some(stored) = stored else { return };
        self.stored = stored;
        let writes_stop = self.writes_stop.clone();
        // Results behind the state (a crash after the state was written) are caught up here.
        if !self.flush_now(&shutdown, &writes_stop).await {
            return;
        }
        let consumer = self.consumer.clone();
        // One stream for the whole run: each `recv()` would register a waker slot anew.
        let mut messages = consumer.stream();
        let mut job: Option<Job> = None;
        let mut due = tokio::time::Instant::now() + self.flush_interval;
        let mut intact = true;
        loop {
            let writing = job.is_some();
            let room = self.room(job.as_ref());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = OptionFuture::from(job.as_mut().map(|j| &mut j.writes)), if writing => {
                    job = None;
                    match done {
                        Ok(Some(written)) => self.finish(written),
                        Ok(None) | Err(_) => {
                            intact = false;
                            break;
                        }
                    }
                }
                () = tokio::time::sleep_until(due), if !writing => {
                    due = tokio::time::Instant::now() + self.flush_interval;
                    match self.start_flush(&shutdown, &writes_stop).await {
                        Some(started) => job = started,
                        None => break,
                    }
                }
                Some(msg) = messages.next(), if room => {
                    // This message, then those already fetched, up to `DRAIN`.
                    let mut next = Some(msg);
                    let mut taken = 0;
                    while let Some(msg) = next.take() {
                        match msg {
                            Ok(msg) => self.handle(&msg, &shutdown).await,
                            Err(err) => tracing::warn!(error = %err, "Kafka consumer error"),
                        }
                        taken += 1;
                        let room = self.room(job.as_ref());
                        if taken < DRAIN && room && !shutdown.is_cancelled() {
                            next = messages.next().now_or_never().flatten();
                        }
                    }
                    // From a backlog the stream never makes this task wait, and a task spawned
                    // from it (a flush's writes) sits in this worker's LIFO slot, which other
                    // workers do not steal, until it does: the first flush of a 1,000,000-sale
                    // backlog waited 3.5 s to start writing.
                    tokio::task::yield_now().await;
                    if job.is_none() && self.batch_full() {
                        due = tokio::time::Instant::now() + self.flush_interval;
                        match self.start_flush(&shutdown, &writes_stop).await {
                            Some(started) => job = started,
                            None => break,
                        }
                    }
                }
            }
        }
        drop(messages);
        let timeout = self.shutdown_timeout;
        let guard = writes_stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            guard.cancel();
        });
        if intact && let Some(pending_job) = job.take() {
            match pending_job.writes.await {
                Ok(Some(written)) => self.finish(written),
                Ok(None) | Err(_) => intact = false,
            }
        }
        // After a flush that did not finish, nothing more is written: its keys are no longer
        // in memory as changed, so a later offset would claim them.
        let flushed = intact && self.flush_now(&writes_stop, &writes_stop).await;
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
        if let Some(compacting) = self.compacting.take() {
            // Within the shutdown timeout; one not done then is done again after the next
            // start (what it replaces is still stored).
            let _ = compacting.await;
        }
        timer.abort();
        if let Err(err) = self.dead_letters.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %err, "dead-letter producer did not flush");
        }
        tracing::info!(partitions = self.parts.len(), "pipeline stopped");
    }

    /// A whole flush, waiting for its writes; false if `stop` or `writes_stop` came first.
    async fn flush_now(
        &mut self,
        stop: &CancellationToken,
        writes_stop: &CancellationToken,
    ) -> bool {
        match self.start_flush(stop, writes_stop).await {
            None => false,
            Some(None) => true,
            Some(Some(job)) => match job.writes.await {
                Ok(Some(written)) => {
                    self.finish(written);
                    true
                }
                Ok(None) | Err(_) => false,
            },
        }
    }

    /// Changed keys not in a flush yet.
    fn touched_keys(&self) -> usize {
        self.parts.values().map(|o| o.state.touched.len()).sum()
    }

    /// A batch big enough to flush before the interval is up.
    fn batch_full(&self) -> bool {
        self.pending >= self.flush_batch || self.touched_keys() >= self.flush_keys
    }

    /// Room to consume: always while no flush is writing; while `job` is, `flush_batch`
    /// messages and `flush_keys` changed keys ahead of it at most, and none of its writes
    /// failed yet.
    fn room(&self, job: Option<&Job>) -> bool {
        job.is_none_or(|job| !job.failing() && !self.batch_full())
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
        let tp: &str = self
            .tp_ids
            .entry((kind, partition))
            .or_insert_with(|| tp_id(topic, partition));
        if !self.parts.contains_key(tp) {
            let loaded = retry("load partition state", stop, &self.metrics, || {
                self.store.load(tp)
            })
            .await;
            let Some(state) = loaded else { return };
            tracing::info!(%tp, next = state.next, "partition state loaded");
            // It was among the others' state in the view; the view is built again with it.
            self.others.remove(tp);
            self.rebuild = true;
            self.loads += 1;
            let owned = Owned {
                topic: topic.to_owned(),
                partition,
                durable: state.next,
                state,
                checked: false,
                loaded: self.loads,
            };
            self.parts.insert(tp.to_owned(), owned);
        }
        let Some(owned) = self.parts.get_mut(tp) else {
            return;
        };
        let next = owned.state.next;
        if !owned.checked {
            let mut seeked = offset == next;
            if !seeked {
                // Kafka's committed position differs from MongoDB's: MongoDB wins.
                let to = Offset::Offset(next);
                match self
                    .consumer
                    .seek(topic, partition, to, Duration::from_secs(5))
                {
                    Ok(()) => {
                        seeked = true;
                        tracing::info!(%tp, from = offset, to = next, "seeked to MongoDB's offset");
                    }
                    Err(err) if offset < next => {
                        tracing::warn!(%tp, error = %err, "seek failed; skipping by offset instead");
                    }
                    Err(err) => {
                        tracing::warn!(%tp, error = %err, from = offset, to = next, "seek failed; the next message tries again");
                    }
                }
            }
            owned.checked = position_settled(offset, next, seeked);
            if offset > next {
                return;
            }
        }
        let counted = self.counted.get(&kind);
        if !owned.state.is_new(offset) {
            counted.inspect(|c| c.replayed.inc());
            return;
        }
        match model::parse(kind, msg.payload()) {
            Ok(input) => {
                self.arrivals += 1;
                owned.state.apply(offset, self.arrivals, input);
                counted.inspect(|c| c.applied.inc());
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
                let trace_id = kafka::trace_id(msg).unwrap_or_default();
                tracing::info!(%tp, offset, %reason, trace_id, "dead-lettered a malformed message");
                owned.state.advance(offset);
                self.metrics.dead_lettered.inc();
                counted.inspect(|c| c.dead_lettered.inc());
            }
        }
        self.pending += 1;
    }

    fn committable(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for o in self.parts.values().filter(|o| o.durable > 0) {
            let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.durable));
        }
        tpl
    }

    /// Prepares a flush from the state in memory and starts its writes: the changed keys of
    /// each partition, then the result documents they change. `None` if `stop` came first;
    /// `Some(None)` when nothing needed writing.
    async fn start_flush(
        &mut self,
        stop: &CancellationToken,
        writes_stop: &CancellationToken,
    ) -> Option<Option<Job>> {
        self.apply_rebalance();
        let started = Instant::now();
        let now = self.clock.now();
        let minute = now.timestamp().div_euclid(60);
        let cells_from = self
            .rules
            .rollup_minutes
            .map(|keep| minute.saturating_sub(keep));
        // Minutes past the rollup's retention leave the state; the view and the results
        // follow below, as for any changed key.
        let mut touched = Touched::default();
        if let Some(from) = cells_from {
            for owned in self.parts.values_mut() {
                touched.cells.extend(owned.state.prune_cells(from));
            }
            for state in self.others.values_mut() {
                touched.cells.extend(state.prune_cells(from));
            }
        }
        let mut parts = Vec::new();
        // One compaction at a time: a partition over the threshold waits for the one under
        // way (its keys keep accumulating), so at most one set of keys is held for it.
        let mut may_compact = self.may_compact();
        for (tp, owned) in self.parts.iter_mut().filter(|(_, o)| o.state.has_changes()) {
            let state = &mut owned.state;
            let entries = Packed::keys(state, &state.touched);
            let next = state.next;
            touched.extend(state.mark_stored(entries.len()));
            // A snapshot is the whole state: taken once the log is at least as large, so the
            // snapshots never write more than the log did.
            let due = state.logged >= self.compact_after.max(state.keys());
            let compaction = (may_compact && due).then(|| {
                may_compact = false;
                state.mark_compacted();
                let documents = store::snapshot(tp, state);
                Compaction {
                    tp: tp.clone(),
                    next,
                    keys: state.keys(),
                    replaces: state.replace_documents(store::ids(&documents)),
                    documents,
                }
            });
            parts.push(PartWrite {
                tp: tp.clone(),
                loaded: owned.loaded,
                next,
                entries,
                compaction,
            });
        }
        let changed = !parts.is_empty();
        let (store, metrics) = (&self.store, &self.metrics);
        let offsets = retry("read offsets", stop, metrics, || store.offsets()).await?;
        self.consumer.context().set_stored_offsets(&offsets);
        let others_changed = match &self.derived_from {
            None => true,
            Some(before) => offsets
                .iter()
                .filter(|(tp, _)| !self.parts.contains_key(*tp))
                .any(|(tp, next)| before.get(tp) != Some(next)),
        };
        let clock_moved = minute != self.risk_minute;
        let changes = if others_changed || self.reload_results || self.rebuild {
            // From scratch: every partition's state, every document compared.
            let mine: Vec<String> = self.parts.keys().cloned().collect();
            let others = retry("read state", stop, metrics, || store.load_others(&mine)).await?;
            if self.reload_results || !others.is_empty() {
                self.stored = retry("read results", stop, metrics, || store.load_digests()).await?;
                self.reload_results = false;
            }
            self.others = others;
            if let Some(from) = cells_from {
                for state in self.others.values_mut() {
                    state.prune_cells(from);
                }
            }
            let all: Vec<&PartitionState> = (self.parts.values().map(|o| &o.state))
                .chain(self.others.values())
                .collect();
            self.view = View::build(&all);
            self.rebuild = false;
            self.risk_minute = minute;
            results::all_changes(&self.view, &self.rules, now, &self.stored)
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
        self.derived_from = Some(offsets);
        let messages = std::mem::take(&mut self.pending);
        if parts.is_empty() && changes.is_empty() {
            self.metrics.idle_flushes.inc();
            self.metrics.last_flush.set(chrono::Utc::now().timestamp());
            return Some(None);
        }
        let writes = Writes {
            parts,
            changes,
            messages,
            started,
            prepared: started.elapsed(),
        };
        let failing = Arc::new(AtomicBool::new(false));
        let job = write(
            self.store.clone(),
            self.metrics.clone(),
            writes_stop.clone(),
            self.turn.clone(),
            failing.clone(),
            writes,
        );
        Some(Some(Job {
            writes: tokio::spawn(job),
            failing,
        }))
    }

    /// Whether a compaction may start: none is under way, and none ended undone. Before
    /// shutdown only a panic ends one undone, and after it a later compaction would delete
    /// log documents holding keys it does not have; so the log just grows until the next
    /// start, which compacts it again.
    fn may_compact(&mut self) -> bool {
        if let Some(ended) = self.compacting.take_if(|c| c.is_finished())
            && !matches!(ended.now_or_never(), Some(Ok(Some(()))))
        {
            tracing::error!("a log compaction ended undone; no more until the service restarts");
            self.compactions_work = false;
        }
        self.compactions_work && self.compacting.is_none()
    }

    /// After a flush's writes: its offsets are durable (and committed to Kafka), the stored
    /// result digests are what it wrote, and the compaction it prepared (its partition's log,
    /// this flush's entries included) starts beside the next flushes.
    fn finish(&mut self, mut done: Written) {
        let mut compaction = None;
        for (w, logged) in done.writes.parts.iter_mut().zip(done.logged.drain(..)) {
            // A partition revoked (and perhaps loaded again) since the flush was prepared:
            // another owner may have written newer documents, which what this flush knew
            // must not be mistaken for. Its documents are deleted after a later load.
            let Some(owned) = (self.parts.get_mut(&w.tp)).filter(|o| o.loaded == w.loaded) else {
                continue;
            };
            match w.compaction.take() {
                Some(mut c) => {
                    c.replaces.log.extend(logged);
                    compaction = Some(c);
                }
                None => owned.state.documents.log.extend(logged),
            }
        }
        if let Some(c) = compaction {
            let job = compact(
                self.store.clone(),
                self.metrics.clone(),
                self.writes_stop.clone(),
                self.turn.clone(),
                c,
            );
            self.compacting = Some(tokio::spawn(job));
        }
        let writes = &done.writes;
        for w in &writes.parts {
            if let Some(owned) = self.parts.get_mut(&w.tp) {
                owned.durable = owned.durable.max(w.next);
            }
        }
        self.stored.apply(&writes.changes);
        if !writes.parts.is_empty() {
            let tpl = self.committable();
            if let Err(err) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %err, "Kafka commit failed (MongoDB holds the offsets)");
            }
            if let Ok(mut p) = self.positions.lock() {
                for o in self.parts.values() {
                    p.insert((o.topic.clone(), o.partition), o.durable);
                }
            }
        }
        let took = writes.started.elapsed();
        tracing::debug!(
            messages = writes.messages,
            documents = done.documents,
            results = writes.changes.len(),
            took_ms = took.as_millis() as u64,
            prepared_ms = writes.prepared.as_millis() as u64,
            state_ms = done.state_took.as_millis() as u64,
            "flushed"
        );
        self.metrics.flush_seconds.observe(took.as_secs_f64());
        self.metrics.documents_written.inc_by(done.documents as u64);
        self.metrics.last_flush.set(chrono::Utc::now().timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::position_settled;

    #[test]
    fn a_position_ahead_of_mongodb_is_settled_only_by_a_seek() {
        // Kafka's position ahead of MongoDB's offset: skipping on would lose 5..10.
        assert!(
            !position_settled(10, 5, false),
            "a failed seek must be tried again"
        );
        assert!(position_settled(10, 5, true));
        // Behind it: replayed offsets are skipped one by one, seek or not.
        assert!(position_settled(3, 5, false));
        assert!(position_settled(3, 5, true));
        // Where MongoDB says: nothing to seek.
        assert!(position_settled(5, 5, true));
    }
}
