//! Polling with a deadline: how tests wait for I/O instead of sleeping a fixed time.

use std::{future::Future, time::Duration};

use anyhow::bail;
use tokio::time::Instant;

/// Calls `check` until it returns `Some`, starting every 10 ms and backing off to 250 ms, and
/// fails naming `what` if `timeout` passes first.
///
/// ```no_run
/// # async fn t(counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> anyhow::Result<()> {
/// use std::{sync::atomic::Ordering, time::Duration};
/// let n = sluice_testkit::eventually("100 events stored", Duration::from_secs(10), || async {
///     let n = counter.load(Ordering::SeqCst);
///     (n >= 100).then_some(n)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let value = eventually("third call", Duration::from_secs(5), || {
            let calls = calls.clone();
            async move { (calls.fetch_add(1, Ordering::SeqCst) >= 2).then_some(42) }
        })
        .await
        .expect("condition met");
        assert_eq!(value, 42);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_with_the_description_after_the_deadline() {
        let err = eventually("a miracle", Duration::from_secs(1), || async { None::<()> })
            .await
            .expect_err("never true");
        assert!(err.to_string().contains("a miracle"), "{err}");
    }
}
