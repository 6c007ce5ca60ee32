//! Removing a test's resources from `Drop`, which cannot be async.

use std::future::Future;

/// Runs `cleanup` to completion on a runtime of its own in a separate thread, so it works
/// whether the dropping code is inside a Tokio runtime or not. Failures are logged, not raised:
/// a leftover uniquely named resource bothers no other test.
pub(crate) fn run_blocking<F>(what: &str, cleanup: F)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let what = what.to_owned();
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(cleanup)
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%what, error = %err, "test cleanup failed"),
        Err(_) => tracing::warn!(%what, "test cleanup panicked"),
    }
}
