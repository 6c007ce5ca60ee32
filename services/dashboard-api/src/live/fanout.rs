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
//! - `Open`: the shard writes the frame at once, polling with a no-op waker. If the socket
//!   takes it whole, that is all. If not, the rest stays in the socket's buffer, the socket
//!   becomes `Blocked` and its own task is told to take over.
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

/// How a write that must not wait went.
enum Write {
    /// On the wire (in the kernel's buffer).
    Done,
    /// Taken, but part of it is still in the socket's own buffer.
    Partly,
    /// Not taken: the socket's buffer is still full from before.
    Refused,
    Failed,
}

impl Conn {
    /// Writes `message` without waiting.
    fn write_now(&mut self, message: Message) -> Write {
        let mut cx = Context::from_waker(Waker::noop());
        let mut ws = Pin::new(&mut self.ws);
        match ws.as_mut().poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Write::Failed,
            Poll::Pending => return Write::Refused,
        }
        if ws.as_mut().start_send(message).is_err() {
            return Write::Failed;
        }
        match ws.poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Write::Done,
            Poll::Ready(Err(_)) => Write::Failed,
            Poll::Pending => Write::Partly,
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

    /// Gives it `frame` (of topic `t`, which `superseded` newer-than-sent frames were skipped
    /// for); false when the socket is closed and the shard should forget it.
    fn offer(&self, frame: &Frame, t: usize, superseded: u64, tally: &mut Tally) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return false;
        }
        if !self.topics[t] {
            return true;
        }
        tally.skipped += superseded;
        let mut conn = self.lock();
        let written = match conn.flow {
            Flow::Closed => return false,
            Flow::Blocked => {
                if conn.pending[t].replace(frame.clone()).is_some() {
                    tally.skipped += 1;
                }
                return true;
            }
            Flow::Open => conn.write_now(Message::Text(frame.text.clone())),
        };
        match written {
            Write::Done => {
                tally.sent += 1;
                return true;
            }
            Write::Partly => {
                tally.sent += 1;
                conn.flow = Flow::Blocked;
            }
            Write::Refused => {
                conn.pending[t] = Some(frame.clone());
                conn.flow = Flow::Blocked;
            }
            Write::Failed => conn.flow = Flow::Closed,
        }
        let closed = conn.flow == Flow::Closed;
        drop(conn);
        self.takeover.notify_one();
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
) -> Option<Vec<(Frame, u64)>> {
    let mut newest: [Option<(Frame, u64)>; TOPIC_COUNT] = Default::default();
    let mut lagged = false;
    let mut put = |frame: Frame| {
        if let Some(t) = topic_index(frame.topic) {
            let superseded = newest[t].take().map_or(0, |(_, n)| n + 1);
            newest[t] = Some((frame, superseded));
        }
    };
    match first {
        Ok(frame) => put(frame),
        Err(RecvError::Lagged(_)) => lagged = true,
        Err(RecvError::Closed) => return None,
    }
    loop {
        match rx.try_recv() {
            Ok(frame) => put(frame),
            Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
            Err(_) => break,
        }
    }
    if lagged {
        // A shard that fell a whole queue behind: every topic's latest state, skips uncounted.
        return Some(hub.latest_all().into_iter().map(|f| (f, 0)).collect());
    }
    Some(newest.into_iter().flatten().collect())
}

/// One shard: waits for frames and offers each to every socket it holds.
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
        let Some(frames) = collect(&hub, &mut rx, first) else {
            return;
        };
        subs.append(&mut joins.take());
        let mut tally = Tally::default();
        for (frame, superseded) in &frames {
            let Some(t) = topic_index(frame.topic) else {
                continue;
            };
            let (mut i, mut visited) = (0, 0);
            while i < subs.len() {
                if subs[i].offer(frame, t, *superseded, &mut tally) {
                    i += 1;
                } else {
                    subs.swap_remove(i);
                }
                visited += 1;
                if visited % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        metrics.ws_sent.inc_by(tally.sent);
        metrics.ws_skipped.inc_by(tally.skipped);
    }
}
