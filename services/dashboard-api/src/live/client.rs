//! One socket's task: it sends the current state, takes over from the fan-out when the socket
//! is blocked (flushing within the send timeout, then writing what is pending), reads what the
//! client sends, re-checks the session and pings, and closes the socket at shutdown. It is not
//! woken for updates the fan-out could write at once, which is nearly all of them.

use std::{
    collections::BTreeSet,
    future::poll_fn,
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use futures::{Sink, Stream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Hub,
    fanout::{Flow, Subscriber},
    topic_index,
};
use crate::{
    metrics::DashboardMetrics,
    sessions::SessionStore,
    users::{Role, UserStore},
};

/// What one client needs.
#[derive(Debug, Clone)]
pub(crate) struct ClientCtx {
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: DashboardMetrics,
    pub(crate) shutdown: CancellationToken,
    pub(crate) send_timeout: Duration,
    pub(crate) tracker: TaskTracker,
    pub(crate) access: Access,
}

/// What a socket re-checks periodically: its session still exists and its user still has the
/// role the topics need, so a logout, an expiry or a demotion also ends live updates.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub(crate) sessions: SessionStore,
    pub(crate) users: UserStore,
    pub(crate) session_id: String,
    pub(crate) user: String,
    pub(crate) needs: Role,
    pub(crate) every: Duration,
}

impl Access {
    async fn holds(&self) -> bool {
        let live = self.sessions.is_live(&self.session_id).await;
        let role = self.users.role(&self.user).await;
        // A database that does not answer is not a reason to cut everyone off.
        match (live, role) {
            (Ok(false), _) | (_, Ok(None)) => false,
            (_, Ok(Some(role))) => role >= self.needs,
            _ => true,
        }
    }
}

/// The client is gone or too slow: the socket is dropped.
#[derive(Debug)]
struct Gone;

/// Runs `f` on the socket under its lock, as a future (the lock is held only while polled).
async fn with_ws<T>(
    sub: &Subscriber,
    timeout: Duration,
    mut f: impl FnMut(
        Pin<&mut axum::extract::ws::WebSocket>,
        &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T, axum::Error>>,
) -> Result<T, Gone> {
    let op = poll_fn(|cx| f(Pin::new(&mut sub.lock().ws), cx));
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(Gone),
    }
}

/// Sends `message` from the task (the fan-out keeps frames pending meanwhile), then whatever
/// is pending.
async fn send_own(sub: &Subscriber, ctx: &ClientCtx, message: Message) -> Result<(), Gone> {
    {
        let mut conn = sub.lock();
        if conn.flow == Flow::Closed {
            return Err(Gone);
        }
        conn.flow = Flow::Blocked;
    }
    with_ws(sub, ctx.send_timeout, |ws, cx| ws.poll_ready(cx)).await?;
    Pin::new(&mut sub.lock().ws)
        .start_send(message)
        .map_err(|_| Gone)?;
    drain(sub, ctx).await
}

/// Flushes the socket and writes what is pending (fed together, then one flush), each step
/// within the send timeout, until nothing is left; then opens the socket to the fan-out again.
async fn drain(sub: &Subscriber, ctx: &ClientCtx) -> Result<(), Gone> {
    loop {
        with_ws(sub, ctx.send_timeout, |ws, cx| ws.poll_flush(cx)).await?;
        let frames: Vec<_> = {
            let mut conn = sub.lock();
            match conn.flow {
                Flow::Closed => return Err(Gone),
                Flow::Open => return Ok(()),
                Flow::Blocked => {}
            }
            let frames: Vec<_> = conn.pending.iter_mut().filter_map(Option::take).collect();
            if frames.is_empty() {
                conn.flow = Flow::Open;
                return Ok(());
            }
            frames
        };
        for frame in frames {
            with_ws(sub, ctx.send_timeout, |ws, cx| ws.poll_ready(cx)).await?;
            Pin::new(&mut sub.lock().ws)
                .start_send(Message::Text(frame.text))
                .map_err(|_| Gone)?;
            ctx.metrics.ws_sent.inc();
        }
    }
}

/// Closes the socket with `code` (best effort, within the send timeout).
async fn close(sub: &Subscriber, ctx: &ClientCtx, code: u16, reason: &'static str) {
    sub.close();
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = with_ws(sub, ctx.send_timeout, |ws, cx| ws.poll_ready(cx)).await;
    if sent.is_ok()
        && Pin::new(&mut sub.lock().ws)
            .start_send(Message::Close(Some(close)))
            .is_ok()
    {
        let _ = with_ws(sub, ctx.send_timeout, |ws, cx| ws.poll_flush(cx)).await;
    }
}

/// Serves one WebSocket until it closes, the client is too slow or stops answering, its
/// session ends (close code 1008), or the service stops (1001, going away).
pub(crate) async fn serve_client(
    socket: axum::extract::ws::WebSocket,
    ctx: ClientCtx,
    topics: BTreeSet<&'static str>,
) {
    let _guard = ctx.tracker.token();
    ctx.metrics.ws_clients.inc();
    let sub = Arc::new(Subscriber::new(
        socket,
        topics.iter().filter_map(|t| topic_index(t)),
    ));
    // Join before reading the current state, so nothing published in between is missed; the
    // fan-out keeps newer frames pending until the task has sent this state.
    ctx.hub.join(sub.clone());
    {
        let mut conn = sub.lock();
        for t in sub.topics() {
            if conn.pending[t].is_none() {
                conn.pending[t] = ctx.hub.latest_of(t);
            }
        }
    }
    let mut outcome = drain(&sub, &ctx).await;
    let mut shutdown = pin!(ctx.shutdown.cancelled());
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.access.every,
        ctx.access.every,
    );
    // Whether the client sent anything (a pong at least) since the last ping.
    let (mut heard, mut pinged) = (false, false);
    while outcome.is_ok() {
        tokio::select! {
            () = &mut shutdown => {
                close(&sub, &ctx, close_code::AWAY, "server shutting down").await;
                break;
            }
            () = sub.takeover.notified() => outcome = drain(&sub, &ctx).await,
            incoming = poll_fn(|cx| Pin::new(&mut sub.lock().ws).poll_next(cx)) => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => heard = true,
            },
            _ = recheck.tick() => {
                if pinged && !heard {
                    // Gone without closing (a laptop asleep, a network lost): free its slot.
                    outcome = Err(Gone);
                    break;
                }
                if !ctx.access.holds().await {
                    close(&sub, &ctx, close_code::POLICY, "session ended").await;
                    break;
                }
                (heard, pinged) = (false, true);
                outcome = send_own(&sub, &ctx, Message::Ping(Default::default())).await;
            }
        }
    }
    sub.close();
    if outcome.is_err() {
        ctx.metrics.ws_dropped.inc();
        tracing::info!("disconnected a WebSocket client that did not keep up or stopped answering");
    }
    ctx.metrics.ws_clients.dec();
}
