//! Overload costs less than work: refusals come before the body is read, requests in flight are
//! bounded, and reads have connections of their own.

use std::time::Duration;

use serde_json::Value;
use sluice_testkit::eventually;
use tokio::io::AsyncWriteExt;

use crate::support::{TestApp, event};

/// Holds `LOCK TABLE event_counters IN EXCLUSIVE MODE` until dropped: plain reads go on, every
/// worker's write blocks inside its transaction, holding its connection, and the backlog grows.
async fn block_writers(
    app: &TestApp,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = app.db.pool().begin().await?;
    sqlx::query("LOCK TABLE event_counters IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

#[tokio::test]
async fn over_the_high_water_mark_the_body_is_not_even_read_and_reads_still_answer()
-> anyhow::Result<()> {
    let app = TestApp::start_with(|c| {
        c.high_water_mark = 3;
        c.worker_count = 2;
        c.database_pool_size = 2;
        c.database_read_pool_size = 1;
    })
    .await?;
    let lock = block_writers(&app).await?;
    let mut i = 0;
    eventually(
        "publish refused as queue_full",
        Duration::from_secs(30),
        || {
            i += 1;
            let body = event("o", &i.to_string());
            let app = &app;
            async move {
                let r = app.publish(&body).await.ok()?;
                (r.status() == 503).then_some(())
            }
        },
    )
    .await?;
    // Over the mark, even a body that is not JSON gets the 503, not a 400: it is never parsed.
    let r = app
        .http
        .post(app.url("/publish"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert!((1..=3).contains(&retry), "jittered 1-3 s, got {retry}");
    assert_eq!(r.json::<Value>().await?["error"], "queue_full");
    // Both writer connections are stuck in blocked transactions; reads have their own pool.
    let (status, _) = app.get_json("/events?limit=1").await?;
    assert_eq!(
        status, 200,
        "/events must not wait for a writer's connection"
    );
    let (status, _) = app.get_json("/stats").await?;
    assert_eq!(status, 200);
    lock.rollback().await?;
    app.wait_received(3).await?;
    app.stop().await
}

#[tokio::test]
async fn requests_over_the_in_flight_bound_are_shed_at_once() -> anyhow::Result<()> {
    let app = TestApp::start_with(|c| c.max_publish_in_flight = 1).await?;
    // One request holds the only slot: headers sent, body promised and never finished.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(addr).await?;
    stalled.write_all(b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"events\":").await?;
    eventually("a second request shed", Duration::from_secs(10), || async {
        let r = app.publish(&event("s", "1")).await.ok()?;
        (r.status() == 503).then_some(r.json::<Value>().await.ok()?)
    })
    .await
    .map(|body| assert_eq!(body["error"], "overloaded"))?;
    // The slot comes back when the stalled client goes away.
    drop(stalled);
    eventually(
        "publish accepted again",
        Duration::from_secs(10),
        || async { (app.publish(&event("s", "2")).await.ok()?.status() == 202).then_some(()) },
    )
    .await?;
    app.stop().await
}
