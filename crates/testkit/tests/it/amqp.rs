use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use sluice_testkit::TestAmqp;

#[tokio::test]
async fn confirmed_publish_is_consumed_and_the_queue_is_deleted_afterwards() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let queue = amqp.name("events");
    let ch = amqp.channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"hello":"world"}"#,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    assert!(confirm.is_ack(), "broker confirmed the message");

    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .expect("a delivery")?;
    assert_eq!(delivery.data, br#"{"hello":"world"}"#);
    delivery.ack(BasicAckOptions::default()).await?;

    drop(consumer);
    drop(amqp);
    let other = TestAmqp::create().await?;
    let probe = other.channel().await?;
    let passive = probe
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        passive.is_err(),
        "queue {queue} still exists after the test"
    );
    Ok(())
}

#[tokio::test]
async fn names_are_unique_per_test() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestAmqp::create(), TestAmqp::create())?;
    assert_ne!(a.name("q"), b.name("q"));
    Ok(())
}
