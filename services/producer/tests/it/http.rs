//! Synthetic events into a real aggregator over HTTP, through its rate limit.

use std::time::Duration;

use serde_json::Value;
use sluice_aggregator::{App, Config};
use sluice_core::config::Secret;
use sluice_producer::run;
use sluice_testkit::{InProcess, TestDatabase, TestRedis, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::args;

#[tokio::test]
async fn http_sink_delivers_every_event_through_429s() -> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Secret::new(db.url().to_owned()),
        redis_url: Secret::new(redis.url().to_owned()),
        stream_key: redis.key("events"),
        consumer_name: Some("producer-test".into()),
        read_block_ms: 200,
        // Two requests at once, then one per 200 ms: the producer must wait and retry.
        rate_limit_per_client: 5.0,
        rate_limit_burst: 2,
        ..Config::default()
    };
    let app = App::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let aggregator = InProcess::spawn(|t| app.run(t));

    let summary = run(
        args(&[
            "--source",
            "synthetic",
            "--total-events",
            "2000",
            "--duplicate-rate",
            "0.3",
            "--batch-size",
            "200",
            "--sink",
            "http",
            "--http-url",
            &base,
        ]),
        CancellationToken::new(),
    )
    .await?;
    assert_eq!((summary.sent, summary.complete), (2000, true));
    let http = reqwest::Client::new();
    let stats = eventually("all consumed", Duration::from_secs(60), || async {
        let s: Value = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (s["received"].as_i64() == Some(2000)).then_some(s)
    })
    .await?;
    let unique = stats["unique_processed"].as_i64().unwrap_or_default();
    assert!(
        (1300..=1500).contains(&unique),
        "about 30 % duplicates dropped: {stats}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"sluice_aggregator_requests_rejected_total{reason="rate_limited"}"#),
        "the producer met 429s"
    );
    aggregator.stop(Duration::from_secs(20)).await??;
    Ok(())
}
