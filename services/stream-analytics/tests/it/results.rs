//! Exact results against the reference, whichever of sales and inventory arrives first.

use std::{collections::BTreeMap, time::Duration};

use mongodb::bson::Document;
use sluice_testkit::eventually;

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, metric, start},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_first_gives_exact_results() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..2_000).map(sale).collect();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let (app, _) = start(env.config()).await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(60))
        .await?;
    // The dashboard notices a changed collection by its latest `updated_at`.
    for name in RESULTS {
        for (id, d) in env.docs(name).await? {
            assert!(
                d.get_datetime("updated_at").is_ok(),
                "{name} {id} has no updated_at date: {d}"
            );
        }
    }
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}

/// The result collections.
const RESULTS: [&str; 4] = [
    "product_winners",
    "loss_risk_products",
    "clients",
    "sales_by_category_minute",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_before_their_inventory_count_once_it_arrives() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..2_000).map(sale).collect();
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let (app, _) = start(env.config()).await?;
    eventually("every sale processed", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? == 2_000).then_some(())
    })
    .await?;
    // Without inventory no product has a price yet: nothing to rank or roll up, but the
    // clients' revenue is already exact.
    let early = env.results().await?;
    let without_inventory = expected(&sales, &[]);
    assert_eq!(early["product_winners"].len(), 0);
    assert_eq!(early["sales_by_category_minute"].len(), 0);
    assert_eq!(early["clients"], without_inventory["clients"]);
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(60))
        .await?;
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}

/// Every document of every collection, `updated_at` included.
async fn snapshot(env: &TestEnv) -> anyhow::Result<Vec<BTreeMap<String, Document>>> {
    let mut all = Vec::new();
    for name in RESULTS
        .iter()
        .chain(&["analytics_state", "analytics_offsets"])
    {
        all.push(env.docs(name).await?);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_input_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..500).map(sale).collect();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let (app, metrics) = start(env.config()).await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(60))
        .await?;
    let before = snapshot(&env).await?;
    let text = metrics.render();
    let (idle, written) = (
        metric(&text, "analytics_idle_flushes_total"),
        metric(&text, "analytics_documents_written_total"),
    );
    assert!(written > 0.0, "the results were written: {text}");
    // Ten flush ticks with nothing new.
    eventually("10 idle flush ticks", Duration::from_secs(30), || async {
        (metric(&metrics.render(), "analytics_idle_flushes_total") >= idle + 10.0).then_some(())
    })
    .await?;
    assert_eq!(
        snapshot(&env).await?,
        before,
        "an idle tick wrote to MongoDB"
    );
    let after = metrics.render();
    assert_eq!(metric(&after, "analytics_documents_written_total"), written);
    // A restart over the same input (replayed from Kafka's committed offsets or skipped by
    // MongoDB's) writes nothing either.
    app.stop(Duration::from_secs(20)).await??;
    let (again, metrics) = start(env.config()).await?;
    eventually(
        "5 idle flush ticks after the restart",
        Duration::from_secs(30),
        || async {
            (metric(&metrics.render(), "analytics_idle_flushes_total") >= 5.0).then_some(())
        },
    )
    .await?;
    assert_eq!(snapshot(&env).await?, before, "the restart rewrote results");
    again.stop(Duration::from_secs(20)).await??;
    Ok(())
}
