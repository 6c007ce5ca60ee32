//! What Postgres would refuse is refused at `/publish`; what it refuses anyway (or keeps failing
//! on) is dead-lettered with the reason and never stalls the stream or disappears.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_testkit::eventually;

use crate::support::{QueueCounts, TestApp, event, eventually_counts};

const EMPTY: QueueCounts = QueueCounts {
    length: 0,
    pending: 0,
    dead: 0,
};
const ONE_DEAD: QueueCounts = QueueCounts {
    length: 0,
    pending: 0,
    dead: 1,
};

#[tokio::test]
async fn what_postgres_cannot_store_is_refused_at_publish_naming_the_field() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    for (field, value, named) in [
        ("topic", json!("a\u{0}"), "topic"),
        ("event_id", json!("\u{0}x"), "event_id"),
        ("source", json!("s\u{0}"), "source"),
        ("payload", json!({"note": "x\u{0}y"}), "payload.note"),
        ("payload", json!({"k\u{0}": true}), "payload.k\u{0}"),
        (
            "payload",
            json!({"list": [{"deep": "\u{0}"}]}),
            "payload.list[0].deep",
        ),
        ("timestamp", json!("0000-06-01T00:00:00Z"), "timestamp"),
    ] {
        let mut bad = event("nul", "2");
        bad[field] = value;
        let r = app
            .publish(&json!({"events": [event("nul", "1"), bad]}))
            .await?;
        assert_eq!(r.status(), 422, "{field}");
        let body: Value = r.json().await?;
        assert_eq!(
            (body["index"].as_u64(), body["field"].as_str()),
            (Some(1), Some(named)),
            "{body}"
        );
    }
    assert_eq!(app.queue_counts().await?, EMPTY, "nothing was queued");
    app.stop().await
}

#[tokio::test]
async fn everything_accepted_at_the_edges_of_validation_is_stored() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let mut deep = json!("bottom");
    for _ in 0..99 {
        deep = json!({ "d": deep });
    }
    let edge = |id: &str, topic: &str, timestamp: &str, payload: Value| json!({"topic": topic, "event_id": id, "source": "edge", "timestamp": timestamp, "payload": payload});
    let events = vec![
        // 255 characters of 4 bytes each: 1,020 bytes, within the characters limit.
        edge("1", &"🚀".repeat(255), "2025-01-01T00:00:00Z", json!({})),
        edge("2", "edge", "0001-01-01T00:00:00Z", json!({})),
        edge("3", "edge", "9999-12-31T23:59:59.999999Z", json!({})),
        edge("4", "edge", "2025-01-01T00:00:00Z", json!({ "d": deep })),
        edge(
            "5",
            "edge",
            "2025-01-01T00:00:00Z",
            json!({"max": f64::MAX, "tiny": 5e-324, "neg": -1.7976931348623157e308, "big": u64::MAX,
                   "min": i64::MIN, "sep": "\u{2028}\u{ffff}", "": "empty key", "ctl": "\u{1}\u{1f}"}),
        ),
    ];
    let n = events.len() as i64;
    assert_eq!(
        app.publish(&json!({ "events": events })).await?.status(),
        202
    );
    let stats = app.wait_received(n).await?;
    assert_eq!(stats["unique_processed"], n);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(app.db.pool())
        .await?;
    assert_eq!(stored, n);
    assert_eq!(app.queue_counts().await?, EMPTY, "nothing dead-lettered");
    app.stop().await
}

/// Appends an entry straight to the stream, bypassing `/publish`'s validation: a batch whose
/// event Postgres refuses (U+0000 in the payload), as an older or foreign publisher might.
async fn append_refused_entry(app: &TestApp) -> anyhow::Result<String> {
    let batch = json!({"v": "1", "events": [{"topic": "poison", "event_id": "nul", "source": "s",
        "timestamp": "2025-01-01T00:00:00Z", "payload": {"bad": "\u{0}"}}]});
    let mut conn = app.redis.conn();
    Ok(redis::cmd("XADD")
        .arg(app.stream_key())
        .arg("*")
        .arg("b")
        .arg(serde_json::to_vec(&batch)?)
        .query_async(&mut conn)
        .await?)
}

#[tokio::test]
async fn an_entry_is_acknowledged_only_once_stored_or_dead_lettered() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let dead_key = format!("{}:dead", app.stream_key());
    // The dead-letter stream cannot take entries: a key of another type is in its place.
    let mut conn = app.redis.conn();
    let () = redis::cmd("SET")
        .arg(&dead_key)
        .arg("not a stream")
        .query_async(&mut conn)
        .await?;
    append_refused_entry(&app).await?;
    assert_eq!(app.publish(&event("good", "1")).await?.status(), 202);
    app.wait_received(1).await?;
    eventually(
        "a failed attempt to dead-letter",
        Duration::from_secs(30),
        || async {
            (app.metric("sluice_aggregator_dead_letter_failures_total")
                .await
                .ok()?
                >= 1.0)
                .then_some(())
        },
    )
    .await?;
    let length: u64 = redis::cmd("XLEN")
        .arg(app.stream_key())
        .query_async(&mut conn)
        .await?;
    let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(app.stream_key())
        .arg("aggregator")
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        (length, pending),
        (1, 1),
        "the refused entry is neither stored nor dead-lettered, so it must stay in the stream"
    );
    // Once the dead-letter stream can take it, the entry moves there with the reason.
    let () = redis::cmd("DEL")
        .arg(&dead_key)
        .query_async(&mut conn)
        .await?;
    eventually_counts(&app.redis, &app.stream_key(), ONE_DEAD).await?;
    let dead: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&dead_key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let reason = dead[0].1.iter().find(|(k, _)| k == "reason");
    assert!(
        reason.is_some_and(|(_, r)| r.contains("SQLSTATE 22P05")),
        "{reason:?}"
    );
    app.stop().await
}

#[tokio::test]
async fn a_round_postgres_keeps_failing_is_split_and_only_the_poison_is_dead_lettered()
-> anyhow::Result<()> {
    let app = TestApp::start_with(|c| c.read_count = 50).await?;
    // A failure outside SQLSTATE classes 22/23 that retrying never cures, as a statement
    // timeout on a huge round would be: a trigger cancels every statement carrying the marker.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.payload ? 'poison' THEN
             RAISE EXCEPTION 'canceling statement due to poison' USING ERRCODE = '57014';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON processed_events
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(app.db.pool())
    .await?;
    let mut poison = event("p", "poison");
    poison["payload"] = json!({"poison": true});
    let bodies = [
        json!([event("p", "1"), event("p", "2")]),
        json!([event("p", "3"), poison]),
        json!([event("p", "4")]),
    ];
    for body in &bodies {
        assert_eq!(app.publish(body).await?.status(), 202);
    }
    // The good entries are stored; the one carrying the poison goes to the dead-letter stream
    // whole (an entry is the unit of acknowledgement), event 3 with it.
    let stats = app.wait_received(3).await?;
    assert_eq!(stats["unique_processed"], 3);
    eventually_counts(&app.redis, &app.stream_key(), ONE_DEAD).await?;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM processed_events ORDER BY event_id")
            .fetch_all(app.db.pool())
            .await?;
    assert_eq!(ids, ["1", "2", "4"]);
    app.stop().await
}
