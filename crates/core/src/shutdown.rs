//! Graceful shutdown: SIGTERM or SIGINT cancels a token that every task of the app watches.
//!
//! Only binaries call [`on_signal`]; libraries take a [`CancellationToken`] as a parameter, so
//! tests can stop an app by cancelling it.

use tokio::signal::unix::{SignalKind, signal};
pub use tokio_util::sync::CancellationToken;

/// A token cancelled at the first SIGTERM or SIGINT.
///
/// The signal handlers are installed before this returns, so a signal sent right after the
/// call is never missed. Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let handlers = signal(SignalKind::terminate()).and_then(|term| {
        let int = signal(SignalKind::interrupt())?;
        Ok((term, int))
    });
    match handlers {
        Ok((mut term, mut int)) => {
            let cancel = token.clone();
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "shutdown requested");
                cancel.cancel();
            });
        }
        Err(err) => tracing::error!(%err, "cannot install signal handlers; stop with SIGKILL"),
    }
    token
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let token = on_signal();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("token cancelled by SIGTERM");
    }
}
