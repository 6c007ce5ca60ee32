//! The broadcast of seed 002, for comparison: every update is sent to every client and the
//! round waits for all of them (`asyncio.gather`), so one client that does not read holds up
//! every update for everyone.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, Utf8Bytes, WebSocket},
    },
    response::Response,
    routing::get,
};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use tokio::sync::Mutex;

type Sinks = Arc<Mutex<Vec<SplitSink<WebSocket, Message>>>>;

/// A naive WebSocket server on 127.0.0.1.
#[derive(Clone)]
pub(crate) struct NaiveServer {
    sinks: Sinks,
    pub(crate) addr: SocketAddr,
}

impl NaiveServer {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let sinks = Sinks::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/api/ws", get(upgrade))
            .with_state(sinks.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { sinks, addr })
    }

    /// Sends `text` to every client and returns when all of them took it.
    pub(crate) async fn broadcast(&self, text: Utf8Bytes) {
        let mut sinks = self.sinks.lock().await;
        futures::future::join_all(
            sinks
                .iter_mut()
                .map(|s| s.send(Message::Text(text.clone()))),
        )
        .await;
    }
}

async fn upgrade(State(sinks): State<Sinks>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let (sink, mut stream) = socket.split();
        sinks.lock().await.push(sink);
        while let Some(Ok(_)) = stream.next().await {}
    })
}
