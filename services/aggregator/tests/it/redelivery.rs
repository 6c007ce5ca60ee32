//! The window between the Postgres COMMIT and the XACK, made deterministic: the entry is written
//! and left unacknowledged by hand, exactly as a worker killed in that window leaves it.

use std::time::Duration;

use serde_json::json;
use sluice_aggregator::{
    queue::{self, Consumer, Stream},
    store::{QueuedBatch, Store},
};
use sluice_core::{event::parse_batch, wire::BatchMessage};
use sluice_testkit::{TestDatabase, TestRedis};

use crate::support::{QueueCounts, TestApp, config, event, eventually_counts};

/// A stream with its group, the test's store, and one entry of `events` read (so pending) by
/// consumer `consumer` and committed to Postgres but never acknowledged.
struct CommittedNotAcked {
    store: Store,
    stream: Stream,
    consumer: Consumer,
    batch: QueuedBatch,
}

async fn commit_without_ack(
    db: &TestDatabase,
    redis: &TestRedis,
    consumer: &str,
    events: serde_json::Value,
) -> anyhow::Result<CommittedNotAcked> {
    let store = Store::connect_lazy(db.url(), 2, 1)?;
    store.migrate().await?;
    let conn = queue::connect(redis.url(), Duration::from_secs(5)).await?;
    let stream = Stream::new(conn.clone(), &redis.key("events"), "aggregator");
    stream.ensure_group().await?;
    let bytes = BatchMessage::new(parse_batch(&events)?, None).to_bytes()?;
    let (entry_id, _) = stream.append(&bytes).await?;
    let mut consumer = Consumer::new(
        conn,
        stream.clone(),
        consumer.to_owned(),
        10,
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    let read = consumer.next_new().await?;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].id, entry_id);
    let batch = QueuedBatch {
        entry_id,
        events: parse_batch(&events)?,
    };
    let first = store.write(0, std::slice::from_ref(&batch)).await?;
    assert_eq!((first.fresh_entries, first.received), (1, 2));
    Ok(CommittedNotAcked {
        store,
        stream,
        consumer,
        batch,
    })
}

#[tokio::test]
async fn an_entry_pending_longer_than_any_retention_is_not_counted_twice() -> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let events = json!([event("r", "1"), event("r", "2")]);
    let mut w = commit_without_ack(&db, &redis, "c", events).await?;
    // However long it waits, an entry still in the stream is never forgotten.
    let bound = w.stream.deliverable_from().await?;
    w.store.prune_consumed(bound, Duration::ZERO).await?;
    let again = w.store.write(0, std::slice::from_ref(&w.batch)).await?;
    assert_eq!(
        (again.fresh_entries, again.received),
        (0, 0),
        "a redelivered entry is recognised, not stored as fresh"
    );
    assert_eq!(w.store.counters().await?.received, 2);
    // Once acknowledged (and so deleted from the stream) it can be forgotten.
    w.consumer
        .ack(std::slice::from_ref(&w.batch.entry_id))
        .await?;
    let bound = w.stream.deliverable_from().await?;
    assert_eq!(w.store.prune_consumed(bound, Duration::ZERO).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_commit_without_ack_is_recognised_when_the_restarted_worker_reads_it_again()
-> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let mut cfg = config(db.url(), redis.url(), &redis.key("events"));
    cfg.consumer_name = Some("crashed".into());
    // Worker 0 of a process named "crashed" died after the COMMIT, before the XACK.
    let events = json!([event("r", "1"), event("r", "2")]);
    let w = commit_without_ack(&db, &redis, "crashed-0", events).await?;
    let stream_key = w.stream.key().to_owned();
    drop(w);
    let app = TestApp::start_on(db, redis, cfg).await?;
    assert_eq!(app.publish(&event("r", "3")).await?.status(), 202);
    app.wait_received(3).await?;
    eventually_counts(&app.redis, &stream_key, QueueCounts::default()).await?;
    // Everything consumed: only now can the counters be read as final.
    let (_, stats) = app.get_json("/stats").await?;
    assert_eq!(
        (
            stats["received"].as_i64(),
            stats["unique_processed"].as_i64()
        ),
        (Some(3), Some(3)),
        "{stats}"
    );
    assert!(
        app.metric("sluice_aggregator_redelivered_entries_total")
            .await?
            >= 1.0
    );
    app.stop().await
}
