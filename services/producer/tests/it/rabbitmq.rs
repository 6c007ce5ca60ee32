use std::{io::Write, time::Duration};

use lapin::{options::BasicGetOptions, types::AMQPValue};
use sluice_producer::run;
use sluice_testkit::{FaultProxy, TestAmqp, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{args, drain, queue_len, spawn, topology};

#[tokio::test]
async fn jsonl_to_rabbitmq_dead_letters_poison_records_and_keeps_going() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let dlq = format!("{queue}.dead");
    let dir = std::env::temp_dir().join(sluice_testkit::unique_name("jsonl"));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&input)?;
    for i in 0..100 {
        match i {
            30 => writeln!(f, "{{not json")?,
            60 => writeln!(f, "{{\"blob\": \"{}\"}}", "x".repeat(500))?,
            _ => writeln!(f, "{{\"n\": {i}}}")?,
        }
    }
    drop(f);
    let checkpoint = dir.join("checkpoint.json");
    let run_args = |extra: &[&str]| {
        let mut a = vec![
            "--source",
            "jsonl",
            "--sink",
            "rabbitmq",
            "--amqp-url",
            amqp.url(),
            "--exchange",
            &exchange,
            "--queue",
            &queue,
            "--batch-size",
            "16",
            "--max-message-bytes",
            "200",
        ];
        a.extend_from_slice(extra);
        args(&a)
    };
    let input_s = input.to_string_lossy().into_owned();
    let checkpoint_s = checkpoint.to_string_lossy().into_owned();
    let summary = run(
        run_args(&["--input", &input_s, "--checkpoint-file", &checkpoint_s]),
        CancellationToken::new(),
    )
    .await?;
    assert_eq!(
        (summary.sent, summary.dead_lettered, summary.complete),
        (98, 2, true)
    );

    let ch = amqp.channel().await?;
    let (ids, _, _) = drain(&ch, &queue, 98).await?;
    assert_eq!(ids.len(), 98);
    let mut reasons = Vec::new();
    while let Some(msg) = ch
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-sluice-reason").cloned());
        match reason {
            Some(AMQPValue::LongString(r)) => reasons.push(r.to_string()),
            other => panic!("dead letter without a reason: {other:?}"),
        }
    }
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("over the 200-byte limit"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("line 31: invalid JSON"), "{reasons:?}");

    // The checkpoint says complete: a second run sends nothing.
    let again = run(
        run_args(&["--input", &input_s, "--checkpoint-file", &checkpoint_s]),
        CancellationToken::new(),
    )
    .await?;
    assert_eq!((again.sent, again.complete), (0, true));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn connection_cuts_mid_run_lose_nothing() -> anyhow::Result<()> {
    const TOTAL: usize = 20_000;
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse()?;
    let proxy = FaultProxy::start(broker).await?;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let total = TOTAL.to_string();
    let a = args(&[
        "--source",
        "synthetic",
        "--total-events",
        &total,
        "--sink",
        "rabbitmq",
        "--amqp-url",
        &url,
        "--exchange",
        &exchange,
        "--queue",
        &queue,
        "--batch-size",
        "200",
    ]);
    let running = tokio::spawn(run(a, CancellationToken::new()));
    for cut in 1..=3u32 {
        let at_least = cut * 3_000;
        eventually(
            &format!("{at_least} messages queued"),
            Duration::from_secs(120),
            || async { (queue_len(&amqp, &queue).await.ok()? >= at_least).then_some(()) },
        )
        .await?;
        proxy.cut();
    }
    let summary = tokio::time::timeout(Duration::from_secs(120), running).await???;
    assert!(summary.complete);
    assert!(summary.sent >= TOTAL as u64);
    let ch = amqp.channel().await?;
    let (ids, _, _) = drain(&ch, &queue, TOTAL).await?;
    assert_eq!(ids.len(), TOTAL, "every record arrived at least once");
    Ok(())
}

/// How much of the reconnect wait announced by `line` (`connecting to RabbitMQ failed`, with
/// its `delay` and `timestamp`) is still ahead, if the line is one.
fn reconnect_wait_left(line: &str) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "connecting to RabbitMQ failed" {
        return None;
    }
    // `?delay` is Debug: "1.234567s" or "734.2ms".
    let delay = v["delay"].as_str()?;
    let secs: f64 = match delay.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok()? / 1e3,
        None => delay.strip_suffix('s')?.parse().ok()?,
    };
    let at = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
    let since = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
        .to_std()
        .ok()?;
    Duration::from_secs_f64(secs).checked_sub(since)
}

/// Issue 9 item 14: SIGTERM while RabbitMQ cannot be reached. The reconnect delay (up to 15 s)
/// ran to its end first; the signal is sent while at least 1.5 s of one is still ahead.
#[tokio::test]
async fn sigterm_during_an_outage_exits_promptly() -> anyhow::Result<()> {
    let amqp = TestAmqp::create().await?;
    let (exchange, queue) = topology(&amqp);
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    proxy.refuse();
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let cli: Vec<String> = [
        "--source",
        "synthetic",
        "--total-events",
        "100",
        "--sink",
        "rabbitmq",
        "--amqp-url",
        &url,
        "--exchange",
        &exchange,
        "--queue",
        &queue,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut child = spawn(&cli).await?;
    eventually(
        "a long reconnect wait",
        Duration::from_secs(120),
        || async {
            let logs = child.logs();
            let left = reconnect_wait_left(logs.last()?)?;
            (left >= Duration::from_millis(1500)).then_some(())
        },
    )
    .await?;
    let exit = child.terminate(Duration::from_secs(1)).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}
