//! Delivering one batch: send it until the sink confirms it, waiting between attempts.

use std::time::Duration;

use sluice_resilience::{Backoff, Jitter};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    metrics::ProducerMetrics,
    record::Record,
    sink::{Delivered, Sink},
};

/// Sends until the sink confirms; `None` if shutdown came first. An error the sink calls
/// permanent (the destination refuses the batch as such) ends the run instead of looping.
pub(crate) async fn deliver(
    sink: &mut Sink,
    batch: &[Record],
    pm: &ProducerMetrics,
    shutdown: &CancellationToken,
) -> Result<Option<Delivered>> {
    let mut backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
        .with_jitter(Jitter::Full)
        .delays();
    loop {
        match sink.send(batch).await {
            Ok(delivered) => {
                pm.published.inc_by(delivered.sent);
                pm.dead_lettered.inc_by(delivered.dead_lettered);
                pm.connection_state.set(1);
                return Ok(Some(delivered));
            }
            Err(err) if err.is_permanent() => return Err(err),
            Err(Error::Stopped) => return Ok(None),
            Err(err) => {
                pm.batch_failures.inc();
                pm.connection_state.set(0);
                let delay = retry_delay(&err, backoff.next());
                tracing::warn!(error = %err, ?delay, "delivering a batch failed; sending it again");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

/// The wait before a failed batch is sent again: the backoff's, or longer if the sink asked
/// for longer (a `Retry-After` its own retries could not wait out).
fn retry_delay(err: &Error, backoff: Option<Duration>) -> Duration {
    let backoff = backoff.unwrap_or(Duration::from_secs(10));
    err.retry_after().map_or(backoff, |wait| wait.max(backoff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::HttpFailure;

    /// Issue 9 item 10: a `Retry-After` longer than what was left of the HTTP sink's budget was
    /// dropped, and the batch came back after 100 ms.
    #[test]
    fn a_retry_after_the_sink_could_not_wait_out_still_applies() {
        let busy = Error::Http(HttpFailure::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(30)),
            body: String::new(),
        });
        let backoff = Some(Duration::from_millis(100));
        assert_eq!(retry_delay(&busy, backoff), Duration::from_secs(30));
        assert_eq!(
            retry_delay(&Error::NotConnected, backoff),
            Duration::from_millis(100)
        );
    }
}
