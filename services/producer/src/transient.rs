//! MongoDB faults that pass: a replica-set step-down, a restart, a network blip. The source
//! and the checkpoint store meet them between batches; they are retried with capped, jittered
//! backoff instead of ending the run (the sinks' own outages are retried by [`crate::deliver`]).
//! Anything else (a bad query, authentication, a checkpoint that cannot be parsed) still ends
//! the run at once.

use std::{future::Future, time::Duration};

use mongodb::error::{ErrorKind, RETRYABLE_ERROR, RETRYABLE_WRITE_ERROR, WriteFailure};
use sluice_resilience::{Backoff, Jitter, backoff::Delays};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, record::Record, source::Source};

/// Server error codes of a node that is stepping down, recovering, shutting down or cannot be
/// reached: the codes the driver's own retryable reads use (SDAM spec), plus the legacy
/// NotPrimary (10058).
const TRANSIENT_CODES: [i32; 14] = [
    6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436,
];

/// True when the same MongoDB operation can succeed if tried again later.
pub(crate) fn is_transient(error: &mongodb::error::Error) -> bool {
    if error.contains_label(RETRYABLE_ERROR) || error.contains_label(RETRYABLE_WRITE_ERROR) {
        return true;
    }
    match error.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(e) => TRANSIENT_CODES.contains(&e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => TRANSIENT_CODES.contains(&e.code),
        _ => false,
    }
}

fn delays() -> Delays {
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(15))
        .with_jitter(Jitter::Full)
        .delays()
}

/// After `error`: `Ok` once the next backoff delay has passed if it is transient, the error
/// itself if not, [`Error::Stopped`] if the run is stopped meanwhile.
async fn wait_or_fail(
    error: Error,
    what: &str,
    delays: &mut Delays,
    shutdown: &CancellationToken,
) -> Result<()> {
    let Error::Mongo(e) = &error else {
        return Err(error);
    };
    if !is_transient(e) {
        return Err(error);
    }
    let delay = delays.next().unwrap_or(Duration::from_secs(15));
    tracing::warn!(error = %e, ?delay, "{what} failed; MongoDB is retried");
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = shutdown.cancelled() => Err(Error::Stopped),
    }
}

/// The next batch of `source`, reading again through transient MongoDB faults.
pub(crate) async fn read_batch(
    source: &mut Source,
    max: usize,
    shutdown: &CancellationToken,
) -> Result<Vec<Record>> {
    let mut delays = delays();
    loop {
        match source.next_batch(max).await {
            Err(error) => wait_or_fail(error, "reading the source", &mut delays, shutdown).await?,
            ok => return ok,
        }
    }
}

/// `op` (a checkpoint save), again through transient MongoDB faults.
pub(crate) async fn retrying<T, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut op: impl FnMut() -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let mut delays = delays();
    loop {
        match op().await {
            Err(error) => wait_or_fail(error, what, &mut delays, shutdown).await?,
            ok => return ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::error::{CommandError, Error as MongoError};

    use super::*;

    fn command(code: i32) -> MongoError {
        let e: CommandError = serde_json::from_value(serde_json::json!({
            "code": code, "codeName": "x", "errmsg": "x"
        }))
        .expect("a command error");
        MongoError::from(ErrorKind::Command(e))
    }

    #[test]
    fn step_downs_and_network_errors_are_transient_bad_queries_not() {
        assert!(is_transient(&command(189)), "PrimarySteppedDown");
        assert!(
            is_transient(&command(11602)),
            "InterruptedDueToReplStateChange"
        );
        assert!(is_transient(&command(10107)), "NotWritablePrimary");
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_transient(&MongoError::from(io)));
        assert!(!is_transient(&command(2)), "BadValue");
        assert!(!is_transient(&command(18)), "AuthenticationFailed");
    }
}
