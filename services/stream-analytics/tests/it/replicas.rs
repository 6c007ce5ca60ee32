//! Two replicas in one consumer group split the partitions; one is killed mid-run and the
//! other takes its partitions over; the results are exact.

use std::time::Duration;

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, spawn_child},
};

const SALES: usize = 30_000;

fn loaded_partitions(logs: &[String]) -> usize {
    logs.iter()
        .filter(|l| l.contains("partition state loaded"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_partitions_and_survive_one_killed() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..SALES).map(sale).collect();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let mut a = spawn_child(&env).await?;
    let b = spawn_child(&env).await?;
    // Both members are in the group and each holds some of the 6 partitions.
    sluice_testkit::eventually(
        "both replicas consuming",
        Duration::from_secs(60),
        || async {
            let (la, lb) = (loaded_partitions(&a.logs()), loaded_partitions(&b.logs()));
            (la > 0 && lb > 0).then_some(())
        },
    )
    .await?;
    let done = env.sales_done().await?;
    a.kill().await?;
    assert!(
        done < SALES as i64,
        "the kill must land mid-stream ({done} done)"
    );
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    drop(b);
    Ok(())
}
