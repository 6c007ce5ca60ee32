//! Malformed messages go to the dead-letter topic with the reason; the good ones still count.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};

use crate::{
    data::{client_msgs, expected, inventory, inventory_msg, sale, sale_msg},
    support::{TestEnv, start},
};

const SALE_OK: &str = r#""invoice_id":"X","client_id":"C01","timestamp":"2025-01-19T00:00:00Z""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_the_reason_and_the_rest_counts()
-> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let products = inventory();
    let sales: Vec<_> = (0..300).map(sale).collect();
    env.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
        .await?;
    env.produce(&client_msgs()).await?;
    let (first, rest) = sales.split_at(150);
    env.produce(&first.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let bad_sales = [
        "{not json".to_owned(),
        r#"{"invoice_id":"X","timestamp":"2025-01-19T00:00:00Z","total_amount":1,"items":[{"product_id":"P01","quantity":1}]}"#.to_owned(),
        format!(
            r#"{{{SALE_OK},"total_amount":"12.00","items":[{{"product_id":"P01","quantity":1}}]}}"#
        ),
        format!(
            r#"{{{SALE_OK},"total_amount":12,"items":[{{"product_id":"P01","quantity":-3}}]}}"#
        ),
    ];
    env.produce_raw(
        "topic-raw-sales",
        &bad_sales.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    env.produce_raw(
        "topic-inventory-updates",
        &[r#"{"product_id":"P01","name":"n"}"#],
    )
    .await?;
    env.produce_raw(
        "topic-clients",
        &[r#"{"client_id":"C01","name":"n","total_revenue_generated":1,"loyalty_tier":7}"#],
    )
    .await?;
    env.produce(&rest.iter().map(sale_msg).collect::<Vec<_>>())
        .await?;
    let (app, _) = start(env.config()).await?;
    // Unknown product ids (P930, P931 in the input) are not malformed: their sales count for
    // the clients' revenue, the products just have no price to rank by.
    env.wait_exact(&expected(&sales, &products), Duration::from_secs(60))
        .await?;

    let consumer: StreamConsumer = env
        .kafka
        .client_config()
        .set("group.id", env.kafka.group_id("dlq-check"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[&env.dead_letters])?;
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while reasons.values().map(Vec::len).sum::<usize>() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let header = |name: &str| {
            msg.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let source = header("source-topic");
        let base = source.rsplit('.').next().unwrap_or_default().to_owned();
        // The writer's trace id goes along (produce_raw sets `<topic>#<index>`).
        let trace = header(sluice_core::wire::TRACE_HEADER);
        assert!(
            trace.starts_with(&format!("{base}#")),
            "dead letter from {base} has trace id {trace:?}"
        );
        reasons.entry(base).or_default().push(header("reason"));
    }
    drop(consumer);
    let sales_reasons = reasons["topic-raw-sales"].join(" | ");
    for why in [
        "bad JSON",
        "missing field `client_id`",
        r#""12.00" is not a JSON number"#,
        "-3",
    ] {
        assert!(sales_reasons.contains(why), "{why} not in {sales_reasons}");
    }
    assert!(
        reasons["topic-inventory-updates"][0].contains("missing field"),
        "{reasons:?}"
    );
    assert!(
        reasons["topic-clients"][0].contains("invalid type"),
        "{reasons:?}"
    );
    app.stop(Duration::from_secs(20)).await??;
    Ok(())
}
