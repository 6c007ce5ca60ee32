use std::time::Duration;

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use sluice_testkit::{TestKafka, eventually};

#[tokio::test]
async fn produced_records_are_consumed_by_a_group_that_commits_its_offset() -> anyhow::Result<()> {
    let kafka = TestKafka::create().await?;
    let topic = kafka.topic("sales", 1).await?;
    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()?;
    for i in 0..3 {
        let value = format!(r#"{{"invoice_id":{i}}}"#);
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)?;
    }

    let group = kafka.group_id("analytics");
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut values = Vec::new();
    let mut last_offset = -1;
    while values.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        values.push(String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned());
        last_offset = msg.offset();
    }
    assert_eq!(values[0], r#"{"invoice_id":0}"#);
    assert_eq!(values[2], r#"{"invoice_id":2}"#);

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(last_offset + 1))?;
    // A commit may meet a rebalance in progress, as on real Kafka: retry until the deadline.
    eventually(
        "offset commit accepted",
        Duration::from_secs(30),
        || async { consumer.commit(&tpl, CommitMode::Sync).ok() },
    )
    .await?;

    let committed = consumer.committed(Duration::from_secs(10))?;
    let offset = committed
        .find_partition(&topic, 0)
        .map(|p| p.offset())
        .expect("partition 0 in the committed list");
    assert_eq!(offset, Offset::Offset(3));
    Ok(())
}

#[tokio::test]
async fn topics_of_two_tests_are_distinct() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestKafka::create(), TestKafka::create())?;
    let (ta, tb) = tokio::try_join!(a.topic("sales", 1), b.topic("sales", 1))?;
    assert_ne!(ta, tb);
    assert_ne!(a.group_id("g"), b.group_id("g"));
    Ok(())
}
