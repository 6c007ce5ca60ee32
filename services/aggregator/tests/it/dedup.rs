use serde_json::json;

use crate::support::{TestApp, db_totals, event, events_with_duplicates};

#[tokio::test]
async fn duplicates_within_and_across_batches_are_dropped_and_counted() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let batch = json!([
        event("t", "1"),
        event("t", "1"),
        event("t", "2"),
        event("other", "1")
    ]);
    assert_eq!(app.publish(&batch).await?.status(), 202);
    assert_eq!(app.publish(&batch).await?.status(), 202);
    let stats = app.wait_received(8).await?;
    assert_eq!(
        (
            stats["received"].as_i64(),
            stats["unique_processed"].as_i64(),
            stats["duplicate_dropped"].as_i64()
        ),
        (Some(8), Some(3), Some(5))
    );
    assert_eq!(db_totals(&app.db).await?, (3, 8, 3, 5));
    app.stop().await
}

#[tokio::test]
async fn the_same_events_from_many_concurrent_clients_are_stored_once() -> anyhow::Result<()> {
    let app = TestApp::start_with(|c| c.worker_count = 4).await?;
    let (events, distinct) = events_with_duplicates("conc", 600, 180);
    let clients = 8;
    let mut posts = Vec::new();
    for _ in 0..clients {
        for chunk in events.chunks(50) {
            let body = json!({ "events": chunk });
            let (http, url) = (app.http.clone(), app.url("/publish"));
            posts.push(tokio::spawn(async move {
                http.post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
    }
    for p in posts {
        let status = p.await??;
        assert_eq!(status, 202, "every publish accepted");
    }
    let total = (events.len() * clients) as i64;
    let stats = app.wait_received(total).await?;
    assert_eq!(stats["unique_processed"].as_i64(), Some(distinct as i64));
    assert_eq!(
        stats["duplicate_dropped"].as_i64(),
        Some(total - distinct as i64)
    );
    assert_eq!(
        db_totals(&app.db).await?,
        (
            distinct as i64,
            total,
            distinct as i64,
            total - distinct as i64
        )
    );
    app.stop().await
}
