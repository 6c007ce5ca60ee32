//! What RabbitMQ cannot take: records AMQP cannot carry (issue 9), messages it cannot route and
//! queues that would lose them (issue 11).

use std::{io::Write, time::Duration};

use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use sluice_producer::run;
use sluice_testkit::{TestAmqp, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{args, dead_letters, drain, queue_len, topology};

/// A run that must finish on its own; a wedged one fails the test instead of hanging it.
async fn finish(a: sluice_producer::config::RunArgs) -> anyhow::Result<sluice_producer::Summary> {
    tokio::time::timeout(Duration::from_secs(60), run(a, CancellationToken::new()))
        .await
        .map_err(|_| anyhow::anyhow!("the run is wedged"))?
        .map_err(Into::into)
}

/// Issue 9: AMQP short strings (message id, routing key) hold 255 bytes at most. A record whose
/// id or topic is longer is dead-lettered with the reason; the others are delivered.
#[tokio::test]
async fn records_amqp_cannot_carry_are_dead_lettered() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("amqp-poison"));
    std::fs::create_dir_all(&dir)?;
    // Every id of this file is `<250 x>.jsonl:line-<n>`: over 255 bytes.
    let long_name = dir.join(format!("{}.jsonl", "x".repeat(244)));
    std::fs::write(&long_name, "{\"n\": 1}\n{\"n\": 2}\n")?;
    let topics = dir.join("topics.jsonl");
    let mut f = std::fs::File::create(&topics)?;
    for i in 0..10 {
        if i == 4 {
            writeln!(f, r#"{{"topic":"{}","n":{i}}}"#, "t".repeat(300))?;
        } else {
            writeln!(f, r#"{{"topic":"orders","n":{i}}}"#)?;
        }
    }
    drop(f);
    let run_args = |input: &std::path::Path| {
        let input = input.to_string_lossy().into_owned();
        args(&[
            "--source",
            "jsonl",
            "--input",
            &input,
            "--sink",
            "rabbitmq",
            "--amqp-url",
            amqp.url(),
            "--exchange",
            &exchange,
            "--queue",
            &queue,
        ])
    };
    let summary = finish(run_args(&long_name)).await?;
    assert_eq!((summary.sent, summary.dead_lettered), (0, 2));
    let summary = finish(run_args(&topics)).await?;
    assert_eq!((summary.sent, summary.dead_lettered), (9, 1));

    let ch = amqp.channel().await?;
    let (ids, _, _) = drain(&ch, &queue, 9).await?;
    assert_eq!(ids.len(), 9);
    let mut dead = dead_letters(&ch, &format!("{queue}.dead")).await?;
    dead.sort();
    assert_eq!(dead.len(), 3, "{dead:?}");
    // The long ids travel in a header; the message id is left out rather than cut.
    for (message_id, record_id, reason) in &dead[..2] {
        assert_eq!(message_id, &None);
        assert!(record_id.as_deref().is_some_and(|id| id.len() > 255));
        assert!(reason.contains("message id"), "{reason}");
    }
    assert_eq!(dead[2].0.as_deref(), Some("topics.jsonl:line-5"));
    assert!(dead[2].2.contains("routing key"), "{}", dead[2].2);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Issue 11: a message the broker cannot route (its queue unbound at run time) was confirmed
/// and the checkpoint moved past it. Now it comes back (mandatory), the batch fails, the
/// producer reconnects (declaring the binding again) and sends the batch again.
#[tokio::test]
async fn an_unroutable_message_is_sent_again_not_confirmed_and_dropped() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("amqp-return"));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.jsonl");
    let lines = |from: u32| -> String {
        (from..from + 10)
            .map(|i| format!("{{\"n\":{i}}}\n"))
            .collect()
    };
    std::fs::write(&input, lines(0))?;
    let input_s = input.to_string_lossy().into_owned();
    let a = args(&[
        "--source",
        "jsonl",
        "--input",
        &input_s,
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
    ]);
    let token = CancellationToken::new();
    let running = tokio::spawn(run(a, token.clone()));
    eventually("the first 10 queued", Duration::from_secs(30), || async {
        (queue_len(&amqp, &queue).await.ok()? >= 10).then_some(())
    })
    .await?;
    let ch = amqp.channel().await?;
    ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        FieldTable::default(),
    )
    .await?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)?
        .write_all(lines(10).as_bytes())?;
    let queued = eventually("the next 10 queued", Duration::from_secs(30), || async {
        let n = queue_len(&amqp, &queue).await.ok()?;
        (n >= 20).then_some(n)
    })
    .await;
    token.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), running).await???;
    assert_eq!(queued?, 20, "no record confirmed without a queue");
    assert_eq!(summary.sent, 20);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Issue 11: an existing queue that is not durable would drop confirmed messages when the
/// broker restarts: refused with a setting error. An existing durable quorum queue without our
/// arguments (as the aggregator's ingress declares it) is used.
#[tokio::test]
async fn an_existing_transient_queue_is_refused_and_a_durable_one_used() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let ch = amqp.channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let run_args = |queue: &str| {
        args(&[
            "--source",
            "synthetic",
            "--total-events",
            "10",
            "--sink",
            "rabbitmq",
            "--amqp-url",
            amqp.url(),
            "--exchange",
            &exchange,
            "--queue",
            queue,
        ])
    };
    let err = finish(run_args(&queue))
        .await
        .expect_err("a transient queue is refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("--queue") && text.contains("not durable"),
        "{text}"
    );

    let durable = amqp.name("durable");
    let _ = amqp.name("durable.dead");
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        durable.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        quorum,
    )
    .await?;
    let summary = finish(run_args(&durable)).await?;
    assert_eq!((summary.sent, summary.complete), (10, true));
    assert_eq!(queue_len(&amqp, &durable).await?, 10);
    Ok(())
}
