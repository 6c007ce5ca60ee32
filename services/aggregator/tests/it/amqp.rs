use std::time::Duration;

use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, ShortString},
};
use sluice_core::config::Secret;
use sluice_testkit::{TestAmqp, eventually};

use crate::support::{TestApp, db_totals, event};

#[tokio::test]
async fn amqp_ingress_stores_valid_messages_once_and_dead_letters_invalid_ones()
-> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let queue = amqp.name("ingress");
    let dead = amqp.name("ingress.dead");
    let app = TestApp::start_with(|c| {
        c.amqp_url = Some(Secret::new(amqp.url().to_owned()));
        c.amqp_queue = queue.clone();
        c.amqp_prefetch = 10;
    })
    .await?;
    let ch = amqp.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    // The ingress declares its queues; wait until it consumes.
    eventually(
        "ingress queue declared",
        Duration::from_secs(30),
        || async {
            let probe = amqp.channel().await.ok()?;
            probe
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .ok()
                .filter(|q| q.consumer_count() > 0)
        },
    )
    .await?;

    let publish = |body: Vec<u8>, id: Option<&str>| {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = id {
            props = props.with_message_id(ShortString::from(id));
        }
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?
            .await?;
            anyhow::Ok(())
        }
    };
    publish(b"{not json".to_vec(), Some("bad")).await?;
    publish(serde_json::to_vec(&event("amqp", "1"))?, Some("m1")).await?;
    // The same message again, as after a redelivery: stored and counted once.
    publish(serde_json::to_vec(&event("amqp", "1"))?, Some("m1")).await?;
    publish(
        serde_json::to_vec(&serde_json::json!([event("amqp", "2"), event("amqp", "1")]))?,
        Some("m2"),
    )
    .await?;

    let stats = app.wait_received(3).await?;
    assert_eq!(
        (
            stats["unique_processed"].as_i64(),
            stats["duplicate_dropped"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(db_totals(&app.db).await?, (2, 3, 2, 1));

    let dead_msg = eventually("dead letter", Duration::from_secs(10), || async {
        ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert_eq!(dead_msg.delivery.data, b"{not json");
    let reason = dead_msg
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-sluice-reason").cloned());
    match reason {
        Some(AMQPValue::LongString(text)) => {
            assert!(text.to_string().contains("malformed JSON"), "{text}")
        }
        other => panic!("no reason header: {other:?}"),
    }
    app.stop().await
}

/// Deliveries that are ready together are written in rounds, not one transaction each (the
/// compose demo stored 170–1,000 events/s through this path); a message delivered twice in
/// one round is still counted once.
#[tokio::test]
async fn ready_deliveries_are_stored_in_rounds_and_counted_once() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let queue = amqp.name("rounds");
    let ch = amqp.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    // The queue exists and holds every message before the ingress starts consuming.
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await?;
    const MESSAGES: usize = 400;
    for i in 0..MESSAGES {
        // The second message repeats the first one's id and event: same round, counted once.
        let n = if i == 1 { 0 } else { i };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("r{n}")));
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&event("rounds", &n.to_string()))?,
            props,
        )
        .await?
        .await?;
    }
    let app = TestApp::start_with(|c| {
        c.amqp_url = Some(Secret::new(amqp.url().to_owned()));
        c.amqp_queue = queue.clone();
        c.amqp_prefetch = 200;
    })
    .await?;
    let stats = app.wait_received(MESSAGES as i64 - 1).await?;
    let transactions = eventually(
        "the last round counted",
        Duration::from_secs(10),
        || async {
            let n = app
                .metric("sluice_aggregator_batch_events_count")
                .await
                .ok()?;
            (n > 0.0).then_some(n)
        },
    )
    .await?;
    assert!(
        transactions <= (MESSAGES / 4) as f64,
        "{transactions} transactions for {MESSAGES} ready deliveries"
    );
    assert_eq!(
        (
            stats["received"].as_i64(),
            stats["unique_processed"].as_i64()
        ),
        (Some(MESSAGES as i64 - 1), Some(MESSAGES as i64 - 1)),
        "{stats}"
    );
    assert_eq!(db_totals(&app.db).await?.0, MESSAGES as i64 - 1);
    app.stop().await
}
