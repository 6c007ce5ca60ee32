//! A run killed and resumed emits what an uninterrupted run emits, scaled values included.

use std::{collections::HashMap, io::Write, time::Duration};

use redis::AsyncCommands;
use serde_json::Value;
use sluice_core::wire::BatchMessage;
use sluice_producer::run;
use sluice_testkit::{TestRedis, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{args, spawn};

const LINES: usize = 3_000;

/// event_id → every payload sent for it.
async fn read_stream(redis: &TestRedis, key: &str) -> anyhow::Result<HashMap<String, Vec<Value>>> {
    let entries: redis::streams::StreamRangeReply = redis.conn().xrange_all(key).await?;
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for entry in entries.ids {
        let Some(redis::Value::BulkString(bytes)) = entry.map.get("b") else {
            anyhow::bail!("entry without batch")
        };
        for event in BatchMessage::from_bytes(bytes)?.into_events() {
            // Through the text: the payload's type is the aggregator's business (a map, or the
            // raw JSON as sent), the test only compares values.
            let payload: Value = serde_json::from_str(&serde_json::to_string(&event.payload)?)?;
            out.entry(event.event_id.clone()).or_default().push(payload);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn killed_and_resumed_run_emits_exactly_the_uninterrupted_output() -> anyhow::Result<()> {
    let redis = TestRedis::create().await?;
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("scaling"));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&input)?;
    for i in 0..LINES {
        let amount = (i * 7919 % 1000) as f64 / 10.0;
        writeln!(
            f,
            r#"{{"topic":"sales","event_id":"e{i}","source":"till","timestamp":"2025-01-01T00:00:00Z","payload":{{"amount":{amount},"n":{i}}}}}"#
        )?;
    }
    drop(f);
    let input = input.to_string_lossy().into_owned();
    let common = |key: &str, checkpoint: &str| -> Vec<String> {
        [
            "--source",
            "jsonl",
            "--input",
            &input,
            "--sink",
            "redis",
            "--redis-url",
            redis.url(),
            "--stream-key",
            key,
            "--batch-size",
            "10",
            "--scale-standard",
            "payload.amount",
            "--scale-minmax",
            "payload.n",
            "--checkpoint-file",
            checkpoint,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    };

    let reference_key = redis.key("reference");
    let reference_args = common(&reference_key, &dir.join("ref.json").to_string_lossy());
    let refs: Vec<&str> = reference_args.iter().map(String::as_str).collect();
    run(args(&refs), CancellationToken::new()).await?;
    let reference = read_stream(&redis, &reference_key).await?;
    assert_eq!(reference.len(), LINES);

    let resumed_key = redis.key("resumed");
    let checkpoint = dir.join("resumed.json");
    let cli = common(&resumed_key, &checkpoint.to_string_lossy());
    let mut first = spawn(&cli).await?;
    eventually("some batches sent", Duration::from_secs(60), || async {
        let len: usize = redis.conn().xlen(&resumed_key).await.ok()?;
        (len >= 20).then_some(())
    })
    .await?;
    first.kill().await?;
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint)?)?;
    let count = saved["count"].as_u64().unwrap_or_default();
    assert!(
        count < LINES as u64,
        "killed mid-run (checkpoint at {count})"
    );
    assert!(
        saved["scaler"]["standard"]["payload.amount"]["n"]
            .as_u64()
            .is_some(),
        "scaler state saved as plain JSON: {saved}"
    );
    let mut second = spawn(&cli).await?;
    assert!(second.wait(Duration::from_secs(120)).await?.success());

    let resumed = read_stream(&redis, &resumed_key).await?;
    assert_eq!(resumed.len(), LINES, "every record delivered");
    for (id, payloads) in &resumed {
        for p in payloads {
            assert_eq!(
                Some(p),
                reference[id].first(),
                "record {id} differs from the uninterrupted run"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn sigterm_finishes_the_batch_in_flight_and_checkpoints_it() -> anyhow::Result<()> {
    let redis = TestRedis::create().await?;
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("sigterm"));
    std::fs::create_dir_all(&dir)?;
    let checkpoint = dir.join("checkpoint.json");
    let key = redis.key("events");
    let cli: Vec<String> = [
        "--source",
        "synthetic",
        "--total-events",
        "10000000",
        "--sink",
        "redis",
        "--redis-url",
        redis.url(),
        "--stream-key",
        &key,
        "--batch-size",
        "100",
        "--checkpoint-file",
        &checkpoint.to_string_lossy(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut child = spawn(&cli).await?;
    eventually("a few batches sent", Duration::from_secs(60), || async {
        let len: usize = redis.conn().xlen(&key).await.ok()?;
        (len >= 5).then_some(())
    })
    .await?;
    let status = child.terminate(Duration::from_secs(30)).await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    let sent: usize = read_stream(&redis, &key)
        .await?
        .values()
        .map(Vec::len)
        .sum();
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint)?)?;
    assert_eq!(
        saved["count"].as_u64(),
        Some(sent as u64),
        "the checkpoint covers exactly what was sent"
    );
    assert_eq!(saved["status"], "in_progress");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
