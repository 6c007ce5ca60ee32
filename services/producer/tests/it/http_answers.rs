//! Issue 10: what the HTTP sink makes of the aggregator's answers. A scripted peer gives the
//! answers a real aggregator gives only under load (408 on its own timeout) or that other
//! versions give (200, 201); 413 comes from a real aggregator with a small body limit.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::Value;
use sluice_aggregator::{App, Config};
use sluice_core::config::Secret;
use sluice_producer::{Summary, config::RunArgs, run};
use sluice_testkit::{InProcess, TestDatabase, TestRedis, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::args;

/// Answers `/publish` with the scripted statuses in order (with `Retry-After` if set), then
/// 202; counts the events it took.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<u16>>>,
    retry_after: Option<&'static str>,
    requests: Arc<Mutex<Vec<(u16, usize)>>>,
}

async fn publish(
    State(script): State<Script>,
    Json(body): Json<Value>,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
    let next = script.answers.lock().ok().and_then(|mut a| a.pop_front());
    let status = next.unwrap_or(202);
    let events = body["events"].as_array().map_or(0, Vec::len);
    if let Ok(mut r) = script.requests.lock() {
        r.push((status, events));
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("retry-after", script.retry_after.unwrap_or("0"))])
}

async fn scripted(answers: &[u16]) -> anyhow::Result<(String, Script, CancellationToken)> {
    scripted_with(answers, None).await
}

async fn scripted_with(
    answers: &[u16],
    retry_after: Option<&'static str>,
) -> anyhow::Result<(String, Script, CancellationToken)> {
    let script = Script {
        retry_after,
        ..Script::default()
    };
    script
        .answers
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .extend(answers);
    let app = Router::new()
        .route("/publish", post(publish))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(until.cancelled_owned())
            .await
    });
    Ok((base, script, stop))
}

async fn finish(a: RunArgs) -> anyhow::Result<Summary> {
    tokio::time::timeout(Duration::from_secs(60), run(a, CancellationToken::new()))
        .await
        .map_err(|_| anyhow::anyhow!("the run is wedged"))?
        .map_err(Into::into)
}

#[tokio::test]
async fn http_sink_retries_408_and_takes_every_2xx_as_delivered() -> anyhow::Result<()> {
    let (base, script, stop) = scripted(&[408, 200, 201]).await?;
    let summary = finish(args(&[
        "--source",
        "synthetic",
        "--total-events",
        "30",
        "--batch-size",
        "10",
        "--sink",
        "http",
        "--http-url",
        &base,
    ]))
    .await?;
    assert_eq!((summary.sent, summary.complete), (30, true));
    let requests = script
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert_eq!(
        requests,
        [(408, 10), (200, 10), (201, 10), (202, 10)],
        "the 408 batch is sent again; 200 and 201 are deliveries"
    );
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn http_sink_splits_a_413_batch_and_dead_letters_a_record_too_large_alone()
-> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Secret::new(db.url().to_owned()),
        redis_url: Secret::new(redis.url().to_owned()),
        stream_key: redis.key("events"),
        consumer_name: Some("producer-413".into()),
        read_block_ms: 200,
        // About 20 of the events below fit in one request, and the big one fits in none.
        max_body_bytes: 4096,
        ..Config::default()
    };
    let app = App::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let aggregator = InProcess::spawn(|t| app.run(t));

    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("http-413"));
    std::fs::create_dir_all(&dir)?;
    let (input, dead) = (dir.join("in.jsonl"), dir.join("dead.jsonl"));
    let mut f = std::fs::File::create(&input)?;
    for i in 0..100 {
        let pad = if i == 57 {
            "p".repeat(6000)
        } else {
            String::new()
        };
        writeln!(
            f,
            r#"{{"topic":"t","event_id":"e{i}","source":"s","timestamp":"2025-01-01T00:00:00Z","payload":{{"n":{i},"pad":"{pad}"}}}}"#
        )?;
    }
    drop(f);
    let (input_s, dead_s) = (input.to_string_lossy(), dead.to_string_lossy());
    let cli = [
        "--source",
        "jsonl",
        "--input",
        &input_s,
        "--batch-size",
        "50",
        "--sink",
        "http",
        "--http-url",
        &base,
        "--dead-letter-file",
        &dead_s,
    ];
    let summary = finish(args(&cli)).await?;
    assert_eq!(
        (summary.sent, summary.dead_lettered, summary.complete),
        (99, 1, true)
    );
    let lines = std::fs::read_to_string(&dead)?;
    let line: Value = serde_json::from_str(lines.trim())?;
    assert_eq!(line["id"], "in.jsonl:line-58");
    assert!(
        line["reason"].as_str().is_some_and(|r| r.contains("413")),
        "{line}"
    );
    let http = reqwest::Client::new();
    eventually("99 events stored", Duration::from_secs(60), || async {
        let s: Value = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (s["unique_processed"].as_i64() == Some(99)).then_some(())
    })
    .await?;
    aggregator.stop(Duration::from_secs(20)).await??;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Issue 9 item 14: a stop while the HTTP sink waits out a `Retry-After` ended only after it.
#[tokio::test]
async fn a_stop_ends_the_http_sink_retry_wait() -> anyhow::Result<()> {
    let (base, script, stop) = scripted_with(&[503; 8], Some("30")).await?;
    let token = CancellationToken::new();
    let a = args(&[
        "--source",
        "synthetic",
        "--total-events",
        "10",
        "--sink",
        "http",
        "--http-url",
        &base,
    ]);
    let running = tokio::spawn(run(a, token.clone()));
    eventually("the first 503", Duration::from_secs(30), || async {
        let n = script.requests.lock().map(|r| r.len()).unwrap_or_default();
        (n >= 1).then_some(())
    })
    .await?;
    token.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .map_err(|_| anyhow::anyhow!("the stop waited for the Retry-After"))???;
    assert_eq!((summary.sent, summary.complete), (0, false));
    stop.cancel();
    Ok(())
}
