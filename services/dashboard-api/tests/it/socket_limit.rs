//! The per-session cap on live-update sockets (`SLUICE_DASHBOARD_WS_PER_SESSION`, default 8):
//! the extra upgrade is refused with 429 and a JSON body and counted; a socket that closes,
//! whose connection drops, or whose client stops answering gives its slot back.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use sluice_dashboard::Config;
use sluice_testkit::{FaultProxy, eventually};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{Client, Env, Running};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The default cap.
const PER_SESSION: usize = 8;

/// Opens a socket and waits for its first snapshot, so the server is serving it; a refused
/// upgrade is `Err` with its status and JSON body.
async fn upgrade(client: &Client) -> anyhow::Result<Result<Socket, (StatusCode, Value)>> {
    let mut ws = match client.websocket("winners").await {
        Ok(ws) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice(body).unwrap_or(Value::Null);
            let status = StatusCode::from_u16(response.status().as_u16())?;
            return Ok(Err((status, body)));
        }
        Err(err) => return Err(err.into()),
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = ws.next().await {
            if matches!(msg?, Message::Text(_)) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("socket closed before its first snapshot")
    })
    .await??;
    Ok(Ok(ws))
}

/// A socket that must be accepted.
async fn open(client: &Client) -> anyhow::Result<Socket> {
    upgrade(client)
        .await?
        .map_err(|(status, body)| anyhow::anyhow!("upgrade refused: {status} {body}"))
}

/// Whether an upgrade is refused now.
async fn refused(client: &Client) -> anyhow::Result<bool> {
    Ok(upgrade(client).await?.is_err())
}

/// The value of an unlabelled counter or gauge in `/metrics`.
async fn metric(app: &Running, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(app.url("/metrics")).await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no metric {name} in\n{text}"))
}

/// Polls until `client` can open a socket again.
async fn until_accepted(client: &Client, what: &str) -> anyhow::Result<Socket> {
    eventually(what, Duration::from_secs(10), || async {
        upgrade(client).await.ok()?.ok()
    })
    .await
}

#[tokio::test]
async fn a_session_holds_eight_sockets_and_the_ninth_is_refused_with_429() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    // The sockets held here are never read, so they answer no ping: with the default check
    // (a ping every 15 s, dropped after two unanswered) a run slower than 30 s lost two of
    // them and their slots. Liveness has its own test below; this one is about the count.
    let app = Running::start(Config {
        ws_recheck_ms: 600_000,
        ..env.config()
    })
    .await?;
    let viewer = app.login("viewer").await?;
    let mut sockets = Vec::new();
    for _ in 0..PER_SESSION {
        sockets.push(open(&viewer).await?);
    }
    let Err((status, body)) = upgrade(&viewer).await? else {
        anyhow::bail!("a ninth socket of one session was accepted");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_sockets", "{body}");
    assert_eq!(body["limit"], PER_SESSION, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SLUICE_DASHBOARD_WS_PER_SESSION")),
        "{body}"
    );
    assert_eq!(metric(&app, "dashboard_ws_refused_total").await?, 1.0);
    // The cap is per session: the same user logged in elsewhere still gets a socket.
    let elsewhere = app.login("viewer").await?;
    let _other = open(&elsewhere).await?;

    // A socket closed with a close frame gives its slot back...
    let mut closing = sockets.pop().ok_or_else(|| anyhow::anyhow!("no socket"))?;
    closing.close(None).await?;
    while closing.next().await.is_some() {}
    sockets.push(until_accepted(&viewer, "a slot freed by a close").await?);
    assert!(refused(&viewer).await?, "the cap holds again");

    // ...and so does one whose connection just ends (the client process died).
    drop(sockets.pop());
    sockets.push(until_accepted(&viewer, "a slot freed by a dropped connection").await?);
    assert!(refused(&viewer).await?, "the cap holds again");
    assert_eq!(
        metric(&app, "dashboard_ws_clients").await?,
        (PER_SESSION + 1) as f64
    );
    drop(sockets);
    app.stop().await
}

#[tokio::test]
async fn a_client_that_stops_answering_loses_its_sockets_and_their_slots() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(Config {
        ws_recheck_ms: 200,
        ..env.config()
    })
    .await?;
    let viewer = app.login("viewer").await?;
    // Every socket through a proxy that then holds all traffic: the connections stay open
    // but the client answers nothing, as when a laptop sleeps or its network goes away.
    let proxy = FaultProxy::start(app.addr).await?;
    let behind = Client {
        addr: proxy.addr(),
        ..viewer.clone()
    };
    let mut stalled = Vec::new();
    for _ in 0..PER_SESSION {
        stalled.push(open(&behind).await?);
    }
    proxy.set_latency(Duration::from_secs(3600));
    assert!(
        refused(&viewer).await?,
        "a ninth socket was accepted while eight were open"
    );
    let _ws = until_accepted(&viewer, "slots freed by silent clients").await?;
    assert_eq!(proxy.open_connections(), PER_SESSION, "held by the proxy");
    drop(stalled);
    app.stop().await
}

#[test]
fn a_bad_socket_limit_is_a_config_error_naming_the_setting() {
    for bad in ["0", "lots"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-dashboard"))
            .env("SLUICE_DASHBOARD_WS_PER_SESSION", bad)
            // Nothing listens there: on a config that passes, the start fails at once.
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .env("SLUICE_LOG_FORMAT", "text")
            .output()
            .expect("run sluice-dashboard");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {stderr}");
        assert!(
            stderr.contains("SLUICE_DASHBOARD_WS_PER_SESSION"),
            "{bad}: {stderr}"
        );
    }
}
