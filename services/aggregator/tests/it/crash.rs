//! SIGKILL in the middle of consumption: nothing lost, nothing counted twice.

use serde_json::{Value, json};
use sluice_testkit::{ChildService, TestDatabase, TestRedis};

use crate::support::{
    QueueCounts, db_totals, events_with_duplicates, eventually_counts, queue_counts, spawn_child,
    wait_received,
};

const EVENTS: usize = 20_000;
const DUPLICATES: usize = 6_000;

fn env(db: &TestDatabase, redis: &TestRedis, consumer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url().to_owned()),
        ("REDIS_URL", redis.url().to_owned()),
        ("SLUICE_AGGREGATOR_STREAM_KEY", redis.key("events")),
        ("SLUICE_AGGREGATOR_CONSUMER_NAME", consumer.to_owned()),
        ("WORKER_COUNT", "1".into()),
        // One small entry per transaction, so consumption takes long enough to be interrupted.
        ("SLUICE_AGGREGATOR_READ_COUNT", "1".into()),
    ]
}

/// Posts the events in batches of 20 from 4 concurrent clients, spread over `targets`.
async fn publish_all(events: &[Value], targets: &[&ChildService]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let chunks: Vec<Vec<Value>> = events.chunks(20).map(<[Value]>::to_vec).collect();
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let mine: Vec<(String, Vec<Value>)> = chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == lane)
            .map(|(i, c)| (targets[i % targets.len()].url("/publish"), c.clone()))
            .collect();
        let http = http.clone();
        lanes.push(tokio::spawn(async move {
            for (url, chunk) in mine {
                let status = http
                    .post(url)
                    .json(&json!({ "events": chunk }))
                    .send()
                    .await?
                    .status();
                anyhow::ensure!(status == 202, "publish answered {status}");
            }
            anyhow::Ok(())
        }));
    }
    for lane in lanes {
        lane.await??;
    }
    Ok(())
}

/// After a kill: proves it landed mid-consumption. With the killed process gone, entries still
/// in the stream cannot be consumed before a restart or a peer's claim, so this cannot race.
/// (Whether an entry was between COMMIT and XACK at that instant is left to chance here;
/// `redelivery.rs` puts an entry in exactly that state.)
async fn assert_killed_mid_consumption(redis: &TestRedis) -> anyhow::Result<()> {
    let left = queue_counts(redis, &redis.key("events")).await?;
    assert!(
        left.length > 0,
        "the kill must land while entries are in flight (left: {left:?})"
    );
    Ok(())
}

async fn assert_exact(db: &TestDatabase, redis: &TestRedis, distinct: usize) -> anyhow::Result<()> {
    // Nothing left in the stream, nothing pending, nothing dead-lettered.
    eventually_counts(redis, &redis.key("events"), QueueCounts::default()).await?;
    let (rows, received, unique, dups) = db_totals(db).await?;
    assert_eq!(
        rows, distinct as i64,
        "every accepted (topic, event_id) stored once"
    );
    assert_eq!(received, EVENTS as i64, "every accepted event counted once");
    assert_eq!(
        (unique, dups),
        (distinct as i64, (EVENTS - distinct) as i64)
    );
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_consumption_then_restart_loses_nothing_and_counts_nothing_twice()
-> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let (events, distinct) = events_with_duplicates("kill", EVENTS, DUPLICATES);
    let mut first = spawn_child(&env(&db, &redis, "crash-a")).await?;
    publish_all(&events, &[&first]).await?;
    let http = reqwest::Client::new();
    first.kill().await?;
    assert_killed_mid_consumption(&redis).await?;

    let mut second = spawn_child(&env(&db, &redis, "crash-a")).await?;
    wait_received(&http, &second.url(""), EVENTS as i64).await?;
    assert_exact(&db, &redis, distinct).await?;
    // And a clean stop: SIGTERM ends the process with success.
    let status = second.terminate(std::time::Duration::from_secs(30)).await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        second
            .logs()
            .iter()
            .any(|l| l.contains("aggregator stopped"))
    );
    Ok(())
}

#[tokio::test]
async fn two_processes_share_the_stream_and_survive_one_being_killed() -> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let (events, distinct) = events_with_duplicates("pair", EVENTS, DUPLICATES);
    let mut a = spawn_child(&env(&db, &redis, "pair-a")).await?;
    let b = spawn_child(&env(&db, &redis, "pair-b")).await?;
    publish_all(&events, &[&a, &b]).await?;
    let http = reqwest::Client::new();
    a.kill().await?;
    let left = queue_counts(&redis, &redis.key("events")).await?;
    assert!(
        left.length > 0,
        "the kill must land mid-consumption ({left:?})"
    );
    // B claims what A left pending (claim idle 1 s) and finishes alone; then A comes back and
    // both consume together.
    let a_again = spawn_child(&env(&db, &redis, "pair-a2")).await?;
    wait_received(&http, &b.url(""), EVENTS as i64).await?;
    assert_exact(&db, &redis, distinct).await?;
    drop(a_again);
    Ok(())
}
