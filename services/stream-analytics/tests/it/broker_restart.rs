//! The Kafka broker killed and started again (a durable broker of the test's own): input
//! written before a restart is still there after it, and a service consuming during a restart
//! reconnects, resumes, and its results are exact.

use std::time::Duration;

use sluice_testkit::{OwnKafka, TestKafka, eventually};

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, start},
};

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
    let (app, _metrics) = start(env.config()).await?;
    eventually("some sales stored", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? > 0).then_some(())
    })
    .await?;

    broker.kill().await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
    broker.start_again().await?;
    // The rest of the input exists only after the restart: the service must consume again.
    env.produce(&after.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    assert_eq!(env.sales_done().await?, SALES as i64, "each sale once");
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
