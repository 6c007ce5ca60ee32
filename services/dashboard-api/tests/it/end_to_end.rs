//! The whole path with the real sluice-analytics running in this process: an accountant enters
//! a sale in the page, it goes through Kafka and the analytics into MongoDB, and a viewer's
//! page left open shows the new product winners without a reload.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use sluice_core::config::Secret;
use sluice_testkit::{InProcess, eventually};

use crate::{
    browser::{Driver, log_in, screenshot, until},
    support::{Env, Running},
};

#[tokio::test]
async fn a_sale_entered_by_an_accountant_reaches_a_viewers_page_through_the_analytics()
-> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    // The analytics also reads the clients topic and writes dead letters.
    env.kafka.topic("topic-clients", 1).await?;
    env.kafka.topic("topic-analytics-dead-letters", 1).await?;
    let analytics_config = sluice_analytics::Config {
        host: "127.0.0.1".into(),
        port: 0,
        kafka_brokers: env.kafka.bootstrap().to_owned(),
        mongodb_url: Secret::new(env.mongo.url().to_owned()),
        database: env.mongo.database().name().to_owned(),
        group_id: env.kafka.group_id("analytics"),
        topic_prefix: env.topic_prefix.clone(),
        flush_interval_ms: 100,
        kafka_session_timeout_ms: 6_000,
        ..sluice_analytics::Config::default()
    };
    let analytics = sluice_analytics::App::build(analytics_config).await?;
    let analytics = InProcess::spawn(|token| analytics.run(token));
    let app = Running::start(env.config()).await?;

    // The products exist first (winners need prices); one expires tomorrow, so the loss-risk
    // view shows when the analytics has caught up.
    let accountant_api = app.login("accountant").await?;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .to_string();
    for (id, expiry) in [("P010", "2030-01-31".to_owned()), ("P011", tomorrow)] {
        let mut body = crate::support::inventory_body(id);
        body["expiry_date"] = expiry.into();
        let (status, answer) = accountant_api.post("/api/inventory", body).await?;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    }
    let viewer_api = app.login("viewer").await?;
    eventually(
        "the analytics to process the inventory",
        Duration::from_secs(45),
        || {
            let viewer_api = viewer_api.clone();
            async move {
                let (_, body) = viewer_api.get("/api/results/loss_risk").await.ok()?;
                (body["rows"][0]["product_id"] == "P011").then_some(())
            }
        },
    )
    .await?;

    let driver = Driver::start().await?;
    let base = app.url("/");
    let viewer = driver.browser(1280, 1000).await?;
    log_in(&viewer, &base, "viewer").await?;
    until(
        &viewer,
        "the loss-risk row",
        Duration::from_secs(10),
        "return document.getElementById('loss_risk-body').textContent.includes('P011')",
    )
    .await?;
    let accountant = driver.browser(1280, 1200).await?;
    log_in(&accountant, &base, "accountant").await?;
    for (id, text) in [
        ("sale-client", "C077"),
        ("sale-total", "7.96"),
        ("item-product-1", "P010"),
        ("item-qty-1", "3"),
    ] {
        accountant
            .find(Locator::Id(id))
            .await?
            .send_keys(text)
            .await?;
    }
    accountant
        .find(Locator::Id("sale-add-item"))
        .await?
        .click()
        .await?;
    for (id, text) in [("item-product-2", "P011"), ("item-qty-2", "1")] {
        accountant
            .find(Locator::Id(id))
            .await?
            .send_keys(text)
            .await?;
    }
    accountant
        .find(Locator::Css("#sale-form button[type=submit]"))
        .await?
        .click()
        .await?;
    let submitted = Instant::now();
    until(
        &accountant,
        "the sale published",
        Duration::from_secs(10),
        "return document.getElementById('sale-result').textContent.startsWith('Published sale')",
    )
    .await?;
    until(
        &viewer,
        "P010 among the viewer's winners within 2 s",
        Duration::from_secs(2).saturating_sub(submitted.elapsed()),
        "return document.getElementById('winners-body').textContent.includes('P010')",
    )
    .await?;
    eprintln!(
        "sale submitted in the page to the viewer's winners: {:?}",
        submitted.elapsed()
    );
    // The rollup is written after the winners, and its watcher polls on its own timer.
    until(
        &viewer,
        "the sale in the viewer's chart",
        Duration::from_secs(5),
        "const d = document.getElementById('chart-svg-desc'); \
         return !!d && d.textContent.includes('dairy: sales 7.96, profit 3.56')",
    )
    .await?;
    screenshot(&viewer, "viewer-after-analytics").await?;
    viewer.close().await?;
    accountant.close().await?;
    app.stop().await?;
    analytics.stop(Duration::from_secs(20)).await??;
    // Not dropped, so its topics are not deleted: deleting topics a consumer group had read
    // makes librdkafka's admin client crash against tansu (SIGSEGV in
    // `rd_kafka_metadata_cache_find`, seen here once in two runs and in the analytics tests;
    // docs/analytics.md). tansu keeps topics in memory only.
    std::mem::forget(env.kafka);
    Ok(())
}
