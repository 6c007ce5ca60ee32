//! Building runs and reading what they delivered.

use std::{collections::HashMap, time::Duration};

use clap::Parser;
use futures::StreamExt;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sluice_producer::config::{Cli, Command, RunArgs};
use sluice_testkit::{ChildService, TestAmqp};

/// Parses `sluice-producer run <args>` with test defaults (port 0, no progress bar).
pub(crate) fn args(extra: &[&str]) -> RunArgs {
    let mut all = vec![
        "sluice-producer",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--progress",
        "never",
    ];
    all.extend_from_slice(extra);
    match Cli::try_parse_from(all).expect("valid arguments").command {
        Command::Run(args) => *args,
    }
}

/// The producer binary as a child process with `args` (port 0, no progress bar).
pub(crate) async fn spawn(extra: &[String]) -> anyhow::Result<ChildService> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-producer"));
    cmd.args(["run", "--listen", "127.0.0.1:0", "--progress", "never"])
        .args(extra)
        .env("RUST_LOG", "info");
    ChildService::spawn(cmd, Duration::from_secs(60)).await
}

/// The test's exchange and queue names; the dead-letter exchange and queue the producer derives
/// from them are registered too, so all four are deleted after the test.
pub(crate) fn topology(amqp: &TestAmqp) -> (String, String) {
    let _ = (amqp.name("ex.dlx"), amqp.name("q.dead"));
    (amqp.name("ex"), amqp.name("q"))
}

/// Messages in a queue, without consuming them.
pub(crate) async fn queue_len(amqp: &TestAmqp, queue: &str) -> anyhow::Result<u32> {
    let ch = amqp.channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Consumes every message of `queue` until it has been empty for a moment: message id → count,
/// and the bodies by id.
pub(crate) async fn drain(
    ch: &Channel,
    queue: &str,
    expected_at_least: usize,
) -> anyhow::Result<(
    HashMap<String, u32>,
    HashMap<String, serde_json::Value>,
    Vec<(Option<String>, Vec<u8>)>,
)> {
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "test-drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (mut ids, mut bodies, mut all) = (HashMap::new(), HashMap::new(), Vec::new());
    let mut total = 0;
    loop {
        let wait = if total >= expected_at_least {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(30)
        };
        let Ok(next) = tokio::time::timeout(wait, consumer.next()).await else {
            break;
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string);
        if let Some(id) = &id {
            *ids.entry(id.clone()).or_insert(0) += 1;
            if let Ok(v) = serde_json::from_slice(&delivery.data) {
                bodies.insert(id.clone(), v);
            }
        }
        all.push((id, delivery.data.clone()));
        delivery.ack(BasicAckOptions::default()).await?;
        total += 1;
    }
    Ok((ids, bodies, all))
}

/// Takes every message of a dead-letter queue: (message id, `x-sluice-record-id`,
/// `x-sluice-reason`).
pub(crate) async fn dead_letters(
    ch: &Channel,
    dlq: &str,
) -> anyhow::Result<Vec<(Option<String>, Option<String>, String)>> {
    let header = |h: Option<&lapin::types::FieldTable>, name: &str| match h
        .and_then(|h| h.inner().get(name).cloned())
    {
        Some(lapin::types::AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(dlq.into(), lapin::options::BasicGetOptions { no_ack: true })
        .await?
    {
        let props = &msg.delivery.properties;
        let headers = props.headers().as_ref();
        out.push((
            props.message_id().as_ref().map(ToString::to_string),
            header(headers, "x-sluice-record-id"),
            header(headers, "x-sluice-reason").unwrap_or_default(),
        ));
    }
    Ok(out)
}
