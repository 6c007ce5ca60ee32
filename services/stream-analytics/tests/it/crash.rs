//! SIGKILL while processing, three times, then a restart: the results equal the reference.

use std::time::{Duration, Instant};

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, spawn_child},
};

/// Sales events (1-4 line items each, 2.5 on average).
const SALES: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_stream_then_exact_results() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..SALES).map(sale).collect();
    let started = Instant::now();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    env.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    eprintln!("produced {SALES} sales in {:?}", started.elapsed());
    let total = SALES as i64;
    for round in 1..=3 {
        let mut child = spawn_child(&env).await?;
        let target = total * round / 4;
        let done = sluice_testkit::eventually(
            &format!("{target} sales durably processed"),
            Duration::from_secs(90),
            || async {
                let done = env.sales_done().await.ok()?;
                (done >= target).then_some(done)
            },
        )
        .await?;
        child.kill().await?;
        assert!(
            done < total,
            "kill {round} must land mid-stream ({done} of {total} done)"
        );
        eprintln!("killed at {done} of {total} after {:?}", started.elapsed());
    }
    let mut last = spawn_child(&env).await?;
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    eprintln!("exact after {:?}", started.elapsed());
    let status = last.terminate(Duration::from_secs(30)).await?;
    assert!(status.success(), "exit after SIGTERM: {status}");
    let logs = last.logs();
    assert!(logs.iter().any(|l| l.contains("stream analytics stopped")));
    // Nothing panics on the way out (the MongoDB driver's session cleanup did, spawned on a
    // runtime that was shutting down).
    let panics: Vec<&String> = logs.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "panics at shutdown: {panics:?}");
    Ok(())
}
