//! The sink's own waits, under paused time: a sleep shows up whole in `Instant::elapsed`.

use std::time::Duration;

use serde_json::json;
use sluice_core::telemetry::Metrics;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RabbitConfig, RabbitSink};
use crate::{Error, metrics::ProducerMetrics, record::Record};

fn unreachable_sink(shutdown: CancellationToken) -> anyhow::Result<RabbitSink> {
    let metrics = ProducerMetrics::new(&Metrics::new("producer")?)?;
    let config = RabbitConfig {
        // Nothing listens on port 1: every connection attempt is refused at once.
        url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        exchange: "unused".into(),
        queue: "unused".into(),
        routing_key: "events".into(),
        confirm_timeout: Duration::from_secs(5),
        max_retries: 0,
        max_message_bytes: 1024,
    };
    Ok(RabbitSink::new(config, metrics, shutdown))
}

/// Issue 9 item 14: the reconnect wait (up to 15 s) ignored SIGTERM.
#[tokio::test(start_paused = true)]
async fn a_stop_ends_the_reconnect_wait() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut sink = unreachable_sink(shutdown.clone())?;
    let record = [Record::new("r1", None, json!({"n": 1}))];
    // Grow the reconnect delay past its first steps.
    for _ in 0..4 {
        let err = sink.send(&record).await.err();
        assert!(!matches!(err, None | Some(Error::Stopped)), "{err:?}");
    }
    shutdown.cancel();
    let start = Instant::now();
    let err = sink.send(&record).await.err();
    assert!(matches!(err, Some(Error::Stopped)), "{err:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait after the stop");
    Ok(())
}

/// Issue 9 item 14: while the breaker is open, each batch waited up to 5 s, deaf to SIGTERM.
#[tokio::test(start_paused = true)]
async fn a_stop_ends_the_breaker_wait() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut sink = unreachable_sink(shutdown.clone())?;
    let record = [Record::new("r1", None, json!({"n": 1}))];
    // Five failed batches in a row open the broker preset's breaker.
    for _ in 0..5 {
        let _ = sink.send(&record).await;
    }
    let stopper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            shutdown.cancel();
        })
    };
    let start = Instant::now();
    let err = sink.send(&record).await.err();
    stopper.await?;
    assert!(matches!(err, Some(Error::Stopped)), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    Ok(())
}
