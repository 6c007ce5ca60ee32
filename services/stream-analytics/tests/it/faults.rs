//! MongoDB unreachable for 10 s: consumption pauses, nothing is stored or committed, and the
//! results are exact once it is back; the same for an outage longer than the consumer's poll
//! interval, which takes it out of its group until it consumes again. A log compaction that
//! cannot be written holds up nothing else.

use std::{net::SocketAddr, time::Duration};

use futures::TryStreamExt;
use mongodb::{
    IndexModel,
    bson::{Document, doc},
    options::IndexOptions,
};
use sluice_core::config::Secret;
use sluice_testkit::{FaultProxy, eventually};
use tokio::time::Instant;

use crate::{
    data::{expected, inventory, sale, sale_msg},
    support::{TestEnv, applied_sales, metric, start},
};

const SALES: usize = 30_000;
/// Sales produced once the flushes fail: input that must wait.
const MORE: usize = 2_000;

fn mongo_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    Ok(host_port.parse()?)
}

/// MongoDB's URL through `proxy`, giving up on the server within a second.
fn url_through(proxy: &FaultProxy) -> Secret<String> {
    Secret::new(format!(
        "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
        proxy.addr()
    ))
}

async fn some_sales_stored(env: &TestEnv) -> anyhow::Result<()> {
    eventually("some sales stored", Duration::from_secs(60), || async {
        (env.sales_done().await.ok()? > 0).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_for_10_s_pauses_then_results_are_exact() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let proxy = FaultProxy::start(mongo_addr(env.mongo.url())?).await?;
    let products = inventory();
    let mut sales: Vec<_> = (0..SALES).map(sale).collect();
    env.produce_all(&products, &sales).await?;
    let mut config = env.config();
    // No bound on messages: what stops consuming during the outage is the failure itself.
    config.flush_batch_size = 1_000_000;
    config.mongodb_url = url_through(&proxy);
    let config_topics = config.topics();
    let (app, metrics) = start(config).await?;
    some_sales_stored(&env).await?;
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

/// MongoDB down for longer than `max.poll.interval.ms`: consuming waits all that time, so
/// librdkafka may take the replica out of its group (here it did in most runs: its partitions
/// were revoked ~2 s after MongoDB came back and assigned again ~3 s later; in the others it
/// kept them). Either way, once MongoDB is back the flush that waited is written, the replica
/// holds its partitions, consumes what arrives next, and the results are exact: nothing lost,
/// nothing counted twice by what it replays after a new assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_past_the_poll_interval_then_consuming_resumes_exactly() -> anyhow::Result<()>
{
    let env = TestEnv::create().await?;
    let proxy = FaultProxy::start(mongo_addr(env.mongo.url())?).await?;
    let products = inventory();
    let mut sales: Vec<_> = (0..10_000).map(sale).collect();
    env.produce_all(&products, &sales).await?;
    let mut config = env.config();
    // The shortest librdkafka allows: the session timeout.
    config.kafka_max_poll_interval_ms = config.kafka_session_timeout_ms;
    let poll_interval = Duration::from_millis(config.kafka_max_poll_interval_ms);
    config.mongodb_url = url_through(&proxy);
    let (app, metrics) = start(config).await?;
    some_sales_stored(&env).await?;
    proxy.refuse();
    let down_at = Instant::now();
    let stored_during = env.sales_done().await?;
    let more: Vec<_> = (10_000..12_000).map(sale).collect();
    env.produce(&more.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    sales.extend(more);
    // Down for three poll intervals: past the interval, and past the session timeout after it.
    let outage_ends = down_at + 3 * poll_interval;
    eventually("the outage to pass", 5 * poll_interval, || async {
        let stored_now = env.sales_done().await.ok()?;
        assert!(stored_now <= stored_during, "stored while MongoDB was down");
        (Instant::now() >= outage_ends).then_some(())
    })
    .await?;
    proxy.restore();
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    // It holds its partitions (as many revocations as assignments would mean none) and
    // consumes on; a sale produced now counts once.
    let (assigned, revoked) = (
        r#"analytics_rebalances_total{event="assigned"}"#,
        r#"analytics_rebalances_total{event="revoked"}"#,
    );
    eventually(
        "the replica to hold its partitions",
        Duration::from_secs(120),
        || async {
            let text = metrics.render();
            (metric(&text, assigned) > metric(&text, revoked)).then_some(())
        },
    )
    .await?;
    env.produce(&[sale_msg(&sale(12_000))]).await?;
    sales.push(sale(12_000));
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(120))
        .await?;
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}

/// Log compactions that ended, from the duration histogram's count.
fn compactions(text: &str) -> f64 {
    metric(text, "analytics_compaction_duration_seconds_count")
}

/// A compaction writes a snapshot of a partition's state (seconds of writes against the test
/// server for a large one); the results of the sales that arrive meanwhile must not wait for
/// it. Here it cannot finish at all: `analytics_state` holds a document without the field
/// `blocked`, and a unique index on that field refuses every other such document, so the
/// snapshot fails and is retried until the index is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_cannot_be_written_holds_up_no_results() -> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let state = env
        .mongo
        .database()
        .collection::<Document>("analytics_state");
    let unique = IndexOptions::builder().unique(true).build();
    let blocked = doc! {"blocked": 1};
    let index = IndexModel::builder().keys(blocked).options(unique).build();
    state.create_index(index).await?;
    state.insert_one(doc! {"_id": "blocker"}).await?;
    let products = inventory();
    let mut sales: Vec<_> = (0..2_000).map(sale).collect();
    env.produce_all(&products, &sales).await?;
    let mut config = env.config();
    config.compact_after_entries = 50;
    let (app, metrics) = start(config).await?;
    eventually("a compaction failing", Duration::from_secs(60), || async {
        (metric(&metrics.render(), "analytics_store_errors_total") > 0.0).then_some(())
    })
    .await?;
    let more: Vec<_> = (2_000..3_000).map(sale).collect();
    env.produce(&more.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    sales.extend(more);
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(60))
        .await?;
    let text = metrics.render();
    assert_eq!(compactions(&text), 0.0, "the compaction was still failing");
    state.drop_index("blocked_1").await?;
    eventually("the compaction done", Duration::from_secs(60), || async {
        (compactions(&metrics.render()) >= 1.0).then_some(())
    })
    .await?;
    // The compacted partition's log up to its head is gone: the snapshot holds it.
    let log = env.mongo.database().collection::<Document>("analytics_log");
    let heads = (env
        .mongo
        .database()
        .collection::<Document>("analytics_heads"))
    .find(doc! {})
    .await?
    .try_collect::<Vec<_>>()
    .await?;
    assert!(!heads.is_empty(), "a partition's head is stored");
    for head in heads {
        let (tp, next) = (head.get_str("tp")?, head.get_i64("next")?);
        let covered = doc! {"tp": tp, "next": {"$lte": next}};
        assert_eq!(
            log.count_documents(covered).await?,
            0,
            "{tp}'s log up to {next}"
        );
    }
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
