//! Outages of Postgres and Redis, through a fault proxy the test controls.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_aggregator::App;
use sluice_testkit::{FaultProxy, InProcess, TestDatabase, TestRedis, eventually};

use crate::support::{config, db_totals, event, wait_received};

#[tokio::test]
async fn postgres_down_accepts_up_to_the_high_water_mark_then_drains_when_back()
-> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let proxy = FaultProxy::start(db.addr()?).await?;
    let proxied = db.url_via(proxy.addr());
    let mut cfg = config(&proxied, redis.url(), &redis.key("events"));
    cfg.high_water_mark = 5;
    let app = App::build(cfg).await?;
    let base = format!("http://{}", app.local_addr());
    let running = InProcess::spawn(|t| app.run(t));
    let http = reqwest::Client::new();

    proxy.refuse();
    let (mut accepted, mut refused) = (0, None);
    for i in 0..50 {
        let r = http
            .post(format!("{base}/publish"))
            .json(&event("pg", &i.to_string()))
            .send()
            .await?;
        match r.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refused = Some((
                    r.headers().get("retry-after").cloned(),
                    r.json::<Value>().await?,
                ));
                break;
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
        // Let the backlog monitor see the new length before the next request.
        eventually("backlog updated", Duration::from_secs(5), || async {
            let m = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.contains(&format!(
                "sluice_aggregator_stream_length {}",
                accepted.min(5)
            ))
            .then_some(())
        })
        .await?;
    }
    let (retry_after, body) = refused.ok_or_else(|| anyhow::anyhow!("never refused"))?;
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert_eq!(body["error"], "queue_full");
    assert_eq!(accepted, 5, "accepted exactly up to the high-water mark");

    let health = http.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await?;
    assert_eq!(
        (health["database"].as_str(), health["redis"].as_str()),
        (Some("disconnected"), Some("connected"))
    );

    proxy.restore();
    wait_received(&http, &base, accepted).await?;
    assert_eq!(db_totals(&db).await?, (5, 5, 5, 0));
    running.stop(Duration::from_secs(20)).await??;
    Ok(())
}

#[tokio::test]
async fn redis_down_fails_publish_fast_and_recovers_by_itself() -> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let proxy = FaultProxy::start(redis.addr()?).await?;
    let mut cfg = config(
        db.url(),
        &format!("redis://{}", proxy.addr()),
        &redis.key("events"),
    );
    cfg.publish_timeout_ms = 1_000;
    let app = App::build(cfg).await?;
    let base = format!("http://{}", app.local_addr());
    let running = InProcess::spawn(|t| app.run(t));
    let http = reqwest::Client::new();
    assert_eq!(
        http.post(format!("{base}/publish"))
            .json(&event("r", "0"))
            .send()
            .await?
            .status(),
        202
    );

    proxy.refuse();
    let started = Instant::now();
    let r = http
        .post(format!("{base}/publish"))
        .json(&event("r", "1"))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await?["dependency"], "redis");
    // Fails fast: bounded by the publish timeout (1 s), not hanging.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    proxy.restore();
    eventually("publish works again", Duration::from_secs(30), || async {
        let r = http
            .post(format!("{base}/publish"))
            .json(&event("r", "2"))
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await?;
    wait_received(&http, &base, 2).await?;
    running.stop(Duration::from_secs(20)).await??;
    Ok(())
}

#[tokio::test]
async fn starting_while_postgres_is_down_migrates_and_drains_once_it_is_up() -> anyhow::Result<()> {
    let (db, redis) = tokio::try_join!(TestDatabase::create_empty(), TestRedis::create())?;
    let proxy = FaultProxy::start(db.addr()?).await?;
    proxy.refuse();
    let app = App::build(config(
        &db.url_via(proxy.addr()),
        redis.url(),
        &redis.key("events"),
    ))
    .await?;
    let base = format!("http://{}", app.local_addr());
    let running = InProcess::spawn(|t| app.run(t));
    let http = reqwest::Client::new();
    for i in 0..3 {
        let r = http
            .post(format!("{base}/publish"))
            .json(&event("late", &i.to_string()))
            .send()
            .await?;
        assert_eq!(
            r.status(),
            202,
            "accepted into Redis while Postgres is down"
        );
    }
    proxy.restore();
    wait_received(&http, &base, 3).await?;
    assert_eq!(db_totals(&db).await?, (3, 3, 3, 0));
    running.stop(Duration::from_secs(20)).await??;
    Ok(())
}
