//! The Kafka broker killed and started again (a durable broker of the test's own): input
//! written before a restart is still there after it, and a service consuming during a restart
//! (down until the service's `/health` says so) reconnects, resumes, and its results are exact.

use std::{net::SocketAddr, time::Duration};

use sluice_analytics::App;
use sluice_testkit::{InProcess, OwnKafka, TestKafka, eventually};

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, metric},
};

/// Waits until the service's `/health` answers `ok` (true) or not (false).
async fn health_is(addr: SocketAddr, ok: bool, what: &str) -> anyhow::Result<()> {
    let url = format!("http://{addr}/health");
    eventually(what, Duration::from_secs(60), || async {
        let status = reqwest::get(&url).await.ok()?.status();
        (status.is_success() == ok).then_some(())
    })
    .await
}

const SALES: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_run_then_results_are_exact() -> anyhow::Result<()> {
    let mut broker = OwnKafka::start().await?;
    let env = TestEnv::on(TestKafka::on(&broker.bootstrap()).await?).await?;
    let products = inventory();
    let sales: Vec<_> = (0..SALES).map(sale).collect();
    let (before, after) = sales.split_at(SALES / 3);
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&before.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    // Restarted before anyone read it: the service finds the input all the same.
    broker.start_again().await?;
    sluice_core::telemetry::init_json_logs("analytics-test");
    let app = App::build(env.config()).await?;
    let addr = app.local_addr();
    let metrics = app.metrics().clone();
    let app = InProcess::spawn(|token| app.run(token));
    eventually("some sales stored", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? > 0).then_some(())
    })
    .await?;

    broker.kill().await?;
    // Down until the service itself reports the broker unreachable, then back.
    health_is(addr, false, "/health reports Kafka down").await?;
    broker.start_again().await?;
    health_is(addr, true, "/health reports Kafka back").await?;
    // The rest of the input exists only after the restart: the service must consume again.
    env.produce(&after.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    assert_eq!(env.sales_done().await?, SALES as i64, "each sale once");
    // Whether the restarted broker ends the member's session varies from run to run, so only
    // the first assignment is certain.
    let assigned = r#"analytics_rebalances_total{event="assigned"}"#;
    assert!(
        metric(&metrics.render(), assigned) >= 1.0,
        "{assigned} counts the first"
    );
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
