//! A backlog: flushes are written while it is consumed, not after it.

use std::time::Duration;

use sluice_testkit::eventually;

use crate::{
    data::{expected, inventory, sale},
    support::{TestEnv, applied_sales, start},
};

/// Enough that the sales left after the first sixth take seconds to consume in a debug build,
/// against the ~100 ms between a flush's start and its write.
const SALES: usize = 120_000;

/// While messages are always ready, the consuming loop never waits for one. A flush's
/// writes, spawned from it, must still run meanwhile: until 2026-12-06 they sat in the
/// loop's worker thread (tokio's LIFO slot, which other workers do not steal) until the
/// backlog was consumed, so the first results of a 1,000,000-sale backlog came only once
/// every sale had been applied (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogs_first_flush_is_stored_while_the_rest_is_consumed() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..SALES).map(sale).collect();
    env.produce_all(&products, &sales).await?;
    let mut config = env.config();
    // Flushes by the interval only, as from a large backlog with the default batch bound.
    config.flush_batch_size = 1_000_000;
    let sales_topic = config.topics().sales;
    let (app, metrics) = start(config).await?;
    let applied = || applied_sales(&metrics.render(), &sales_topic);
    eventually(
        "a sixth of the sales applied",
        Duration::from_secs(120),
        || async { (applied() >= (SALES / 6) as f64).then_some(()) },
    )
    .await?;
    // A flush started from here on holds sales consumed from a backlog in full flow. Each
    // check reads the sales applied just before the stored offsets.
    let stored = env.sales_done().await?;
    let applied_then = eventually("more sales stored", Duration::from_secs(120), || async {
        let applied_now = applied();
        (env.sales_done().await.ok()? > stored).then_some(applied_now)
    })
    .await?;
    assert!(
        applied_then < SALES as f64,
        "no flush was stored until all {SALES} sales had been applied"
    );
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
