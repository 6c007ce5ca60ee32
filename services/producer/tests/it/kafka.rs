//! The retail scenario into Kafka: three topics, keyed by config, every record delivered.

use std::{collections::HashMap, io::Write, time::Duration};

use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers as _,
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
    let mut trace_ids = std::collections::HashSet::new();
    while per_topic.values().sum::<usize>() < 500 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        if msg.topic() == sales && msg.key().is_some_and(|k| k.starts_with(b"INV-")) {
            keyed_sales += 1;
        }
        // Each record's id follows it as its trace id.
        let trace = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == sluice_core::wire::TRACE_HEADER))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let trace = trace.unwrap_or_else(|| panic!("no trace id on a message of {}", msg.topic()));
        assert!(trace_ids.insert(trace.clone()), "trace id {trace} twice");
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

/// Issue 9: records Kafka refuses for what they are (over librdkafka's `message.max.bytes` but
/// under `--max-message-bytes`, a topic name no broker accepts) are dead-lettered with the
/// reason; the good records of the same batch are delivered and the run completes.
#[tokio::test]
async fn kafka_poison_records_are_dead_lettered_and_the_run_goes_on() -> anyhow::Result<()> {
    let kafka = TestKafka::create().await?;
    let topic = kafka.topic("in", 1).await?;
    let prefix = topic.strip_suffix("in").unwrap_or_default().to_owned();
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("kafka-poison"));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.jsonl");
    let dead = dir.join("dead.jsonl");
    let mut f = std::fs::File::create(&input)?;
    for i in 0..20 {
        match i {
            // 1,010,000 bytes: under the default --max-message-bytes (1 MiB), over librdkafka's
            // default message.max.bytes (1,000,000).
            5 => writeln!(f, r#"{{"topic":"in","blob":"{}"}}"#, "x".repeat(1_010_000))?,
            // Kafka topic names allow [a-zA-Z0-9._-] only, 249 characters at most.
            9 => writeln!(f, r#"{{"topic":"in/not a topic!","n":{i}}}"#)?,
            13 => writeln!(f, r#"{{"topic":"{}","n":{i}}}"#, "t".repeat(600))?,
            _ => writeln!(f, r#"{{"topic":"in","n":{i}}}"#)?,
        }
    }
    drop(f);
    let (input_s, dead_s) = (input.to_string_lossy(), dead.to_string_lossy());
    let summary = tokio::time::timeout(
        Duration::from_secs(90),
        run(
            args(&[
                "--source",
                "jsonl",
                "--input",
                &input_s,
                "--sink",
                "kafka",
                "--kafka-brokers",
                kafka.bootstrap(),
                "--kafka-topic-prefix",
                &prefix,
                "--dead-letter-file",
                &dead_s,
                "--batch-size",
                "8",
            ]),
            CancellationToken::new(),
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the run is wedged on a poison record"))??;
    assert_eq!(
        (summary.sent, summary.dead_lettered, summary.complete),
        (17, 3, true)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["in.jsonl:line-10", "in.jsonl:line-14", "in.jsonl:line-6"]
    );
    for line in &lines {
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("Kafka refused the record"), "{line}");
    }

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", kafka.group_id("check"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    for _ in 0..17 {
        tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
