//! Live updates: a change in MongoDB reaches an open socket; a client that never reads does not
//! delay one that does; shutdown closes sockets with 1001 (going away).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use mongodb::bson::{DateTime as BsonTime, doc};
use serde_json::{Value, json};
use sluice_dashboard::Config;
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::support::{Env, Running};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next snapshot of `topic` whose data satisfies `check`, within `timeout`.
async fn next_snapshot(
    ws: &mut Socket,
    topic: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no matching {topic} snapshot within {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text)?;
            if v["topic"] == topic && check(&v["data"]) {
                return Ok(v["data"].clone());
            }
        }
    }
}

#[tokio::test]
async fn a_new_result_in_mongo_reaches_an_open_socket_within_2_s() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let viewer = app.login("viewer").await?;
    let mut ws = viewer.websocket("winners").await?;
    // First the current state: empty, with its placeholder.
    next_snapshot(&mut ws, "winners", Duration::from_secs(5), |d| {
        d["empty"] == true
    })
    .await?;
    env.mongo
        .database()
        .collection("product_winners")
        .insert_one(doc! {"_id": "P1", "rank": 1_i64, "product_id": "P1", "name": "Tea", "profit": "9.00", "updated_at": BsonTime::now()})
        .await?;
    let written = Instant::now();
    let data = next_snapshot(&mut ws, "winners", Duration::from_secs(2), |d| {
        d["rows"][0]["product_id"] == "P1"
    })
    .await?;
    assert_eq!(data["empty"], false);
    eprintln!("Mongo write to socket: {:?}", written.elapsed());
    app.stop().await
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_delay_one_that_does() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let config = Config {
        client_queue: 4,
        send_timeout_ms: 8_000,
        ..env.config()
    };
    let app = Running::start(config).await?;
    let viewer = app.login("viewer").await?;
    let _slow = viewer.websocket("winners").await?; // never read
    let mut fast = viewer.websocket("winners").await?;
    next_snapshot(&mut fast, "winners", Duration::from_secs(5), |_| true).await?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(Ok(msg)) = fast.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(seq) = v["data"]["seq"].as_u64() else {
                    continue;
                };
                let at = sent.lock().ok().and_then(|s| s.get(&seq).copied());
                if let Some(at) = at {
                    latencies.push(at.elapsed());
                }
                if seq == 159 {
                    break;
                }
            }
            latencies
        })
    };
    // 160 frames of 100 kB, one every 25 ms: 16 MB, far beyond the socket buffers of the
    // client that never reads, so its sends block and it must be skipped and then dropped.
    let pad = "x".repeat(100_000);
    let mut ticker = tokio::time::interval(Duration::from_millis(25));
    for seq in 0..160_u64 {
        ticker.tick().await;
        if let Ok(mut s) = sent.lock() {
            s.insert(seq, Instant::now());
        }
        app.hub.publish("winners", &json!({"seq": seq, "pad": pad}));
    }
    let latencies = tokio::time::timeout(Duration::from_secs(10), reader).await??;
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "fast client: {} frames, worst latency {worst:?}",
        latencies.len()
    );
    assert!(
        latencies.len() >= 20,
        "the fast client got {} frames",
        latencies.len()
    );
    assert!(
        worst < Duration::from_secs(2),
        "worst latency {worst:?} (the slow client's send timeout is 8 s)"
    );
    let metrics = sluice_testkit::eventually(
        "the slow client dropped",
        Duration::from_secs(20),
        || async {
            let text = reqwest::get(app.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("dashboard_ws_dropped_total 1")
                .then_some(text)
        },
    )
    .await?;
    assert!(
        !metrics.contains("dashboard_ws_skipped_total 0"),
        "{metrics}"
    );
    app.stop().await
}

#[tokio::test]
async fn every_socket_gets_the_updates_in_order_and_the_last_one() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(Config {
        ws_per_session: 64,
        ..env.config()
    })
    .await?;
    let viewer = app.login("viewer").await?;
    let mut sockets = Vec::new();
    for _ in 0..48 {
        let mut ws = viewer.websocket("winners,loss_risk").await?;
        // Both topics' current state first: the socket is being served.
        for topic in ["winners", "loss_risk"] {
            next_snapshot(&mut ws, topic, Duration::from_secs(5), |_| true).await?;
        }
        sockets.push(ws);
    }
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    // Only the published winners: loss_risk must not arrive here unasked
                    // either, and its watcher's snapshots carry no `seq`.
                    if let Some(seq) = v["data"]["seq"].as_u64() {
                        assert_eq!(v["topic"], "winners", "{v}");
                        seen.push(seq);
                        if seq == 29 {
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..30_u64 {
        ticker.tick().await;
        app.hub.publish("winners", &json!({"seq": seq}));
    }
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(10), reader).await??;
        // A socket may skip to the latest state, never go back or repeat one.
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&29), "{seen:?}");
    }
    app.stop().await
}

#[tokio::test]
async fn shutdown_closes_sockets_as_going_away() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let admin = app.login("admin").await?;
    let mut ws = admin.websocket("winners,system").await?;
    next_snapshot(&mut ws, "winners", Duration::from_secs(5), |_| true).await?;
    let stopping = tokio::spawn(app.stop());
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await?;
    assert_eq!(code, Some(CloseCode::Away));
    stopping.await??;
    Ok(())
}

#[tokio::test]
async fn a_logout_closes_the_sessions_open_sockets() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(Config {
        ws_recheck_ms: 200,
        ..env.config()
    })
    .await?;
    let viewer = app.login("viewer").await?;
    let mut ws = viewer.websocket("winners").await?;
    next_snapshot(&mut ws, "winners", Duration::from_secs(5), |_| true).await?;
    let (status, _, _) = viewer
        .send(reqwest::Method::POST, "/api/logout", None)
        .await?;
    assert_eq!(status, reqwest::StatusCode::OK);
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await?;
    assert_eq!(code, Some(CloseCode::Policy));
    app.stop().await
}
