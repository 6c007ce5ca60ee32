//! The fan-out: a few shard tasks (one per CPU) each hold a share of the sockets and write every
//! new frame to each of them directly, instead of waking one task per socket.
//!
//! Why: profiling the 10,000-socket benchmark (docs/benchmarks.md) showed the `sendto` syscall
//! was under half of the server's CPU per delivered frame; the rest was waking and scheduling
//! 10,000 tasks per update, each polling a `select!` of four futures (its socket's read side
//! among them, which zeroed a 4 KiB buffer on every poll), receiving from a broadcast channel of
//! 10,000 receivers, and allocating to coalesce. Here a delivery is a lock of an uncontended
//! mutex, a frame header and a copy into the socket's buffer, and the write.
//!
//! A socket is in one of three states ([`Flow`]):
//! - `Open`: the shard writes at once, polling with a no-op waker: the round's frames of the
//!   socket's topics fed into its buffer, then one flush, one system call. If the socket takes
//!   it all, that is all. If not, the rest stays in the socket's buffer, the socket becomes
//!   `Blocked` and its own task is told to take over.
//! - `Blocked`: the shard only keeps the frame as that topic's pending one, replacing (and
//!   counting as skipped) an older pending frame of the same topic — so a client's queue is at
//!   most one frame per topic, its latest state. The socket's task flushes, with the send
//!   timeout, then writes what is pending, and opens the socket again when nothing is left.
//! - `Closed`: the socket's task has ended, or a write failed; the shard forgets it.
//!
//! The shards never wait for a socket, so no client delays another.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use axum::extract::ws::{Message, WebSocket};
use futures::Sink;
use tokio::sync::{
    Notify,
    broadcast::{self, error::RecvError},
};
use tokio_util::sync::CancellationToken;

use super::{Frame, Hub, TOPIC_COUNT, topic_index};
use crate::metrics::DashboardMetrics;

/// A shard yields to other tasks after this many sockets, so a fan-out of thousands does not
/// hold a worker thread for its whole length.
const YIELD_EVERY: usize = 64;

/// What the shard may do with a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Open,
    Blocked,
    Closed,
}

/// A socket and what waits for it; always behind [`Subscriber::conn`].
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) ws: WebSocket,
    pub(crate) flow: Flow,
    /// The newest frame of each topic not yet written (only while `Blocked`).
    pub(crate) pending: [Option<Frame>; TOPIC_COUNT],
}

/// A frame of one fan-out round: the frame, its topic, and how many older frames of that
/// topic it replaced before the round began.
#[derive(Debug)]
pub(crate) struct Update {
    frame: Frame,
    topic: usize,
    superseded: u64,
}

/// What a socket's buffer did with what the fan-out gave it, which must not wait.
#[derive(Debug)]
enum Took {
    /// On the wire (in the kernel's buffer).
    All,
    /// Taken, but part of it is still in the socket's own buffer.
    Partly,
    Failed,
}

impl Conn {
    /// Queues `message` in the socket's buffer without waiting; false when the buffer is still
    /// full from before.
    fn feed_now(&mut self, message: Message) -> Result<bool, ()> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut ws = Pin::new(&mut self.ws);
        match ws.as_mut().poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => ws.start_send(message).map(|()| true).map_err(drop),
            Poll::Ready(Err(_)) => Err(()),
            Poll::Pending => Ok(false),
        }
    }

    /// Writes the buffer without waiting: one system call for every frame fed since the last.
    fn flush_now(&mut self) -> Took {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.ws).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Took::All,
            Poll::Ready(Err(_)) => Took::Failed,
            Poll::Pending => Took::Partly,
        }
    }
}

/// One socket as the fan-out sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// Which topics it gets, by [`topic_index`].
    topics: [bool; TOPIC_COUNT],
    pub(crate) conn: Mutex<Conn>,
    /// Tells the socket's task to take over: the socket is blocked, or closed.
    pub(crate) takeover: Notify,
    /// Set when the socket's task ends, so the shard drops it without taking the lock.
    gone: AtomicBool,
}

/// Counts of one fan-out, added to the metrics once.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    skipped: u64,
}

impl Subscriber {
    /// A socket for `topics`, `Blocked` until its task has sent the current state.
    pub(crate) fn new(ws: WebSocket, topics: impl IntoIterator<Item = usize>) -> Self {
        let mut wanted = [false; TOPIC_COUNT];
        for t in topics {
            wanted[t] = true;
        }
        Self {
            topics: wanted,
            conn: Mutex::new(Conn {
                ws,
                flow: Flow::Blocked,
                pending: Default::default(),
            }),
            takeover: Notify::new(),
            gone: AtomicBool::new(false),
        }
    }

    /// The topics it gets.
    pub(crate) fn topics(&self) -> impl Iterator<Item = usize> + '_ {
        (0..TOPIC_COUNT).filter(|&t| self.topics[t])
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks it closed: the shards forget it.
    pub(crate) fn close(&self) {
        self.lock().flow = Flow::Closed;
        self.gone.store(true, Ordering::Release);
    }

    /// Gives it this round's updates of its topics: written at once when it is open (fed,
    /// then one flush), kept pending otherwise. False when the socket is closed and the shard
    /// should forget it.
    fn offer(&self, updates: &[Update], tally: &mut Tally) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return false;
        }
        let mut wanted = updates.iter().filter(|u| self.topics[u.topic]).peekable();
        if wanted.peek().is_none() {
            return true;
        }
        let mut conn = self.lock();
        if conn.flow == Flow::Closed {
            return false;
        }
        let was_open = conn.flow == Flow::Open;
        let mut fed = false;
        for u in wanted {
            tally.skipped += u.superseded;
            if conn.flow == Flow::Open {
                match conn.feed_now(Message::Text(u.frame.text.clone())) {
                    Ok(true) => {
                        tally.sent += 1;
                        fed = true;
                        continue;
                    }
                    Ok(false) => conn.flow = Flow::Blocked,
                    Err(()) => {
                        conn.flow = Flow::Closed;
                        break;
                    }
                }
            }
            if conn.pending[u.topic].replace(u.frame.clone()).is_some() {
                tally.skipped += 1;
            }
        }
        if fed && conn.flow != Flow::Closed {
            match conn.flush_now() {
                Took::All => {}
                Took::Partly => conn.flow = Flow::Blocked,
                Took::Failed => conn.flow = Flow::Closed,
            }
        }
        let (open, closed) = (conn.flow == Flow::Open, conn.flow == Flow::Closed);
        drop(conn);
        if was_open && !open {
            // Blocked or closed in this round: the socket's task takes over.
            self.takeover.notify_one();
        }
        !closed
    }
}

/// Sockets joining a shard, taken by the shard at its next fan-out.
#[derive(Debug, Default)]
pub(crate) struct Joins(Mutex<Vec<Arc<Subscriber>>>);

impl Joins {
    pub(crate) fn push(&self, sub: Arc<Subscriber>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sub);
    }

    fn take(&self) -> Vec<Arc<Subscriber>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The newest frame of each topic among `first` and what else is waiting, with how many
/// older ones each replaced; after a lag, the hub's latest state of every topic.
fn collect(
    hub: &Hub,
    rx: &mut broadcast::Receiver<Frame>,
    first: Result<Frame, RecvError>,
) -> Option<Vec<Update>> {
    fn put(newest: &mut [Option<Update>; TOPIC_COUNT], frame: Frame) {
        if let Some(topic) = topic_index(frame.topic) {
            let superseded = newest[topic].take().map_or(0, |u| u.superseded + 1);
            newest[topic] = Some(Update {
                frame,
                topic,
                superseded,
            });
        }
    }
    let mut newest: [Option<Update>; TOPIC_COUNT] = Default::default();
    let mut lagged = false;
    match first {
        Ok(frame) => put(&mut newest, frame),
        Err(RecvError::Lagged(_)) => lagged = true,
        Err(RecvError::Closed) => return None,
    }
    loop {
        match rx.try_recv() {
            Ok(frame) => put(&mut newest, frame),
            Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
            Err(_) => break,
        }
    }
    if lagged {
        // A shard that fell a whole queue behind: every topic's latest state, skips uncounted.
        newest = Default::default();
        for frame in hub.latest_all() {
            put(&mut newest, frame);
        }
    }
    Some(newest.into_iter().flatten().collect())
}

/// One shard: waits for frames and offers them to every socket it holds.
pub(crate) async fn run_shard(
    hub: Arc<Hub>,
    joins: Arc<Joins>,
    mut rx: broadcast::Receiver<Frame>,
    metrics: DashboardMetrics,
    shutdown: CancellationToken,
) {
    let mut subs: Vec<Arc<Subscriber>> = Vec::new();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            first = rx.recv() => first,
        };
        let Some(updates) = collect(&hub, &mut rx, first) else {
            return;
        };
        subs.append(&mut joins.take());
        let mut tally = Tally::default();
        let (mut i, mut visited) = (0, 0);
        while i < subs.len() {
            if subs[i].offer(&updates, &mut tally) {
                i += 1;
            } else {
                subs.swap_remove(i);
            }
            visited += 1;
            if visited % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
        }
        metrics.ws_sent.inc_by(tally.sent);
        metrics.ws_skipped.inc_by(tally.skipped);
    }
}
