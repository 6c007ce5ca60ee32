//! MongoDB unreachable for 10 s: consumption pauses, nothing is stored or committed, and the
//! results are exact once it is back.

use std::{net::SocketAddr, time::Duration};

use sluice_core::config::Secret;
use sluice_testkit::{FaultProxy, eventually};
use tokio::time::Instant;

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, metric, start},
};

const SALES: usize = 30_000;
/// Sales produced once the flushes fail: input that must wait.
const MORE: usize = 2_000;

/// Sales messages applied so far (`analytics_messages_total`, outcome `applied`).
fn applied_sales(text: &str, sales_topic: &str) -> f64 {
    let topic = format!("topic=\"{sales_topic}\"");
    text.lines()
        .filter(|l| l.starts_with("analytics_messages_total{") && l.contains(&topic))
        .filter(|l| l.contains("outcome=\"applied\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn mongo_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    Ok(host_port.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_for_10_s_pauses_then_results_are_exact() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let proxy = FaultProxy::start(mongo_addr(env.mongo.url())?).await?;
    let products = inventory();
    let mut sales: Vec<_> = (0..SALES).map(sale).collect();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let mut config = env.config();
    // No bound on messages: what stops consuming during the outage is the failure itself.
    config.flush_batch_size = 1_000_000;
    config.mongodb_url = Secret::new(format!(
        "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
        proxy.addr()
    ));
    let config_topics = config.topics();
    let (app, metrics) = start(config).await?;
    eventually("some sales stored", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? > 0).then_some(())
    })
    .await?;
    proxy.refuse();
    let down_at = Instant::now();
    let errors = metric(&metrics.render(), "analytics_store_errors_total");
    eventually("flushes failing", Duration::from_secs(30), || async {
        (metric(&metrics.render(), "analytics_store_errors_total") > errors).then_some(())
    })
    .await?;
    let stored_during = env.sales_done().await?;
    // The outage comes mid-stream: MORE sales are produced during it.
    // Consuming stops at the first failed write, not only once a full batch waits.
    let sales_topic = config_topics.sales;
    let applied = applied_sales(&metrics.render(), &sales_topic);
    let more: Vec<_> = (SALES..SALES + MORE).map(sale).collect();
    env.produce(&more.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    sales.extend(more);
    // The outage lasts 10 s; all through it nothing is stored and nothing more consumed
    // (at most the one message the loop was already waiting for when the write failed).
    let outage_ends = down_at + Duration::from_secs(10);
    eventually(
        "the 10 s outage to pass",
        Duration::from_secs(30),
        || async {
            let applied_now = applied_sales(&metrics.render(), &sales_topic);
            assert!(
                applied_now <= applied + 1.0,
                "consumed while MongoDB was down: {applied} then {applied_now} sales applied"
            );
            let stored_now = env.sales_done().await.ok()?;
            assert_eq!(stored_now, stored_during, "nothing stored while down");
            (Instant::now() >= outage_ends).then_some(())
        },
    )
    .await?;
    let text = metrics.render();
    assert!(
        metric(&text, "analytics_store_errors_total") >= errors + 2.0,
        "{text}"
    );
    proxy.restore();
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(90))
        .await?;
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
