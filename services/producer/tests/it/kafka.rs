//! The retail scenario into Kafka: three topics, keyed by config, every record delivered.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use sluice_producer::run;
use sluice_testkit::TestKafka;
use tokio_util::sync::CancellationToken;

use crate::support::args;

#[tokio::test]
async fn retail_scenario_lands_in_three_topics_with_keys() -> anyhow::Result<()> {
    let kafka = TestKafka::create().await?;
    let sales = kafka.topic("topic-raw-sales", 1).await?;
    let inventory = kafka.topic("topic-inventory-updates", 1).await?;
    let clients = kafka.topic("topic-clients", 1).await?;
    let prefix = sales
        .strip_suffix("topic-raw-sales")
        .unwrap_or_default()
        .to_owned();
    let summary = run(
        args(&[
            "--source",
            "synthetic",
            "--scenario",
            "retail",
            "--total-events",
            "500",
            "--sink",
            "kafka",
            "--kafka-brokers",
            kafka.bootstrap(),
            "--kafka-topic-prefix",
            &prefix,
            "--kafka-key-field",
            "invoice_id",
            "--batch-size",
            "100",
        ]),
        CancellationToken::new(),
    )
    .await?;
    assert_eq!((summary.sent, summary.complete), (500, true));

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", kafka.group_id("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&sales, &inventory, &clients])?;
    let mut per_topic: HashMap<String, usize> = HashMap::new();
    let mut keyed_sales = 0;
    while per_topic.values().sum::<usize>() < 500 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        if msg.topic() == sales && msg.key().is_some_and(|k| k.starts_with(b"INV-")) {
            keyed_sales += 1;
        }
        *per_topic.entry(msg.topic().to_owned()).or_default() += 1;
    }
    assert_eq!(
        (
            per_topic[&sales],
            per_topic[&inventory],
            per_topic[&clients]
        ),
        (300, 150, 50)
    );
    assert_eq!(keyed_sales, 300, "sales are keyed by invoice_id");
    Ok(())
}
