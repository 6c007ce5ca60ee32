use std::time::Duration;

use mongodb::bson::{Document, doc};
use sluice_producer::run;
use sluice_testkit::{FaultProxy, TestAmqp, TestMongo, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{args, drain, queue_len, spawn, topology};

const DOCS: u32 = 100_000;

async fn seed(mongo: &TestMongo, from: u32, n: u32) -> anyhow::Result<()> {
    let coll = mongo.database().collection::<Document>("events");
    let docs: Vec<Document> = (from..from + n)
        .map(|i| doc! {"_id": i64::from(i), "topic": "orders", "n": i64::from(i)})
        .collect();
    for chunk in docs.chunks(10_000) {
        coll.insert_many(chunk.to_vec()).await?;
    }
    Ok(())
}

async fn checkpoint(mongo: &TestMongo) -> anyhow::Result<Option<Document>> {
    Ok(mongo
        .database()
        .collection::<Document>("producer_checkpoints")
        .find_one(doc! {"_id": "last_processed"})
        .await?)
}

#[tokio::test]
async fn sigkill_halfway_through_100k_documents_then_restart_delivers_every_one()
-> anyhow::Result<()> {
    let (mongo, amqp) = tokio::try_join!(TestMongo::create(), TestAmqp::create())?;
    let (exchange, queue) = topology(&amqp);
    seed(&mongo, 0, DOCS).await?;
    let cli: Vec<String> = [
        "--source",
        "mongo",
        "--mongo-url",
        mongo.url(),
        "--mongo-database",
        mongo.database().name(),
        "--sink",
        "rabbitmq",
        "--amqp-url",
        amqp.url(),
        "--exchange",
        &exchange,
        "--queue",
        &queue,
        "--batch-size",
        "500",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();

    let mut first = spawn(&cli).await?;
    eventually(
        "a third of the documents queued",
        Duration::from_secs(120),
        || async { (queue_len(&amqp, &queue).await.ok()? >= DOCS / 3).then_some(()) },
    )
    .await?;
    first.kill().await?;
    let saved = checkpoint(&mongo).await?.expect("a checkpoint was saved");
    let count = saved.get_i64("count")?;
    let queued = i64::from(queue_len(&amqp, &queue).await?);
    assert!(
        count < i64::from(DOCS),
        "killed halfway, not at the end ({count})"
    );
    assert!(
        count <= queued,
        "checkpoint ({count}) ahead of confirmed messages ({queued})"
    );
    assert_eq!(saved.get_str("status")?, "in_progress");
    assert_eq!(
        saved.get_i64("last_id")?,
        count - 1,
        "last_id is the last document covered"
    );

    let mut second = spawn(&cli).await?;
    let exit = second.wait(Duration::from_secs(180)).await?;
    assert!(exit.success(), "second run: {exit}");
    let saved = checkpoint(&mongo).await?.expect("checkpoint");
    assert_eq!(
        (saved.get_str("status")?, saved.get_i64("count")?),
        ("complete", i64::from(DOCS))
    );
    let ch = amqp.channel().await?;
    let (ids, _, _) = drain(&ch, &queue, DOCS as usize).await?;
    assert_eq!(ids.len(), DOCS as usize, "every document at least once");
    let resent: u32 = ids.values().map(|n| n - 1).sum();
    assert!(
        resent <= 500 * 2,
        "at most the batch in flight is sent twice ({resent})"
    );
    Ok(())
}

#[tokio::test]
async fn watch_mode_picks_up_new_documents() -> anyhow::Result<()> {
    let (mongo, amqp) = tokio::try_join!(TestMongo::create(), TestAmqp::create())?;
    let (exchange, queue) = topology(&amqp);
    seed(&mongo, 0, 100).await?;
    let a = args(&[
        "--source",
        "mongo",
        "--mongo-url",
        mongo.url(),
        "--mongo-database",
        mongo.database().name(),
        "--sink",
        "rabbitmq",
        "--amqp-url",
        amqp.url(),
        "--exchange",
        &exchange,
        "--queue",
        &queue,
        "--watch",
        "--poll-interval-ms",
        "50",
    ]);
    let token = CancellationToken::new();
    let running = tokio::spawn(run(a, token.clone()));
    eventually("first 100 queued", Duration::from_secs(30), || async {
        (queue_len(&amqp, &queue).await.ok()? >= 100).then_some(())
    })
    .await?;
    seed(&mongo, 100, 50).await?;
    eventually("new documents queued", Duration::from_secs(30), || async {
        (queue_len(&amqp, &queue).await.ok()? >= 150).then_some(())
    })
    .await?;
    token.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), running).await???;
    assert_eq!((summary.sent, summary.complete), (150, false));
    Ok(())
}

/// Issue 9 item 13: a MongoDB outage (here every connection reset, as in a restart or a
/// step-down) ended the run with status 1. Now the producer waits it out and goes on.
#[tokio::test]
async fn a_mongodb_outage_mid_run_is_waited_out() -> anyhow::Result<()> {
    let (mongo, amqp) = tokio::try_join!(TestMongo::create(), TestAmqp::create())?;
    let (exchange, queue) = topology(&amqp);
    seed(&mongo, 0, 100).await?;
    let upstream = mongo
        .url()
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .unwrap_or_default()
        .parse()?;
    let proxy = FaultProxy::start(upstream).await?;
    let url = format!(
        "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=500",
        proxy.addr()
    );
    let cli: Vec<String> = [
        "--source",
        "mongo",
        "--mongo-url",
        &url,
        "--mongo-database",
        mongo.database().name(),
        "--watch",
        "--poll-interval-ms",
        "50",
        "--sink",
        "rabbitmq",
        "--amqp-url",
        amqp.url(),
        "--exchange",
        &exchange,
        "--queue",
        &queue,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut child = spawn(&cli).await?;
    eventually("the first 100 queued", Duration::from_secs(60), || async {
        (queue_len(&amqp, &queue).await.ok()? >= 100).then_some(())
    })
    .await?;
    proxy.refuse();
    let survived = eventually("the outage noticed", Duration::from_secs(60), || async {
        let logs = child.logs();
        if logs.iter().any(|l| l.contains("MongoDB is retried")) {
            Some(true)
        } else {
            logs.iter()
                .any(|l| l.contains("producer failed"))
                .then_some(false)
        }
    })
    .await?;
    assert!(survived, "the outage ended the run: {:?}", child.logs());
    proxy.restore();
    seed(&mongo, 100, 50).await?;
    eventually(
        "the documents inserted during the outage queued",
        Duration::from_secs(60),
        || async { (queue_len(&amqp, &queue).await.ok()? >= 150).then_some(()) },
    )
    .await?;
    let exit = child.terminate(Duration::from_secs(30)).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}
