//! Retrying a MongoDB or Kafka call until it succeeds or the service stops.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{Result, metrics::AnalyticsMetrics};

/// Calls `op` until it succeeds, backing off to 2 s; `None` once `stop` is cancelled.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    metrics: &AnalyticsMetrics,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            r = op() => r,
            () = stop.cancelled() => return None,
        };
        match attempt {
            Ok(v) => return Some(v),
            Err(err) => {
                metrics.store_errors.inc();
                tracing::warn!(error = %err, what, retry_in = ?delay, "failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
