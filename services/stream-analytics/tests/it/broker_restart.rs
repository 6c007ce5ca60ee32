//! The Kafka broker killed and started again mid-run (a durable broker of the test's own, so
//! its data survives): the service reconnects, resumes, and the results are exact.

use std::time::Duration;

use sluice_testkit::{OwnKafka, TestKafka, eventually};

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, start},
};

const SALES: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_run_then_results_are_exact() -> anyhow::Result<()> {
    let mut broker = OwnKafka::start().await?;
    let env = TestEnv::on(TestKafka::on(&broker.bootstrap()).await?).await?;
    let products = inventory();
    let sales: Vec<_> = (0..SALES).map(sale).collect();
    let (before, after) = sales.split_at(SALES / 2);
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&before.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let (app, _metrics) = start(env.config()).await?;
    eventually("some sales stored", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? > 0).then_some(())
    })
    .await?;

    broker.kill().await?;
    let stored_while_down = env.sales_done().await?;
    broker.start_again().await?;
    // The rest of the input exists only after the restart: the service must consume again.
    env.produce(&after.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    assert!(
        stored_while_down < SALES as i64,
        "the restart must come before every sale was stored ({stored_while_down})"
    );
    assert_eq!(env.sales_done().await?, SALES as i64, "each sale once");
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
