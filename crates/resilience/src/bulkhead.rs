//! Bulkhead: at most `max_concurrent` calls run at once, at most `max_queue` wait for a slot,
//! and none waits longer than `queue_timeout`. A full bulkhead answers at once with a typed
//! error instead of letting callers pile up.
//!
//! ```
//! use std::time::Duration;
//! use sluice_resilience::Bulkhead;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bulkhead = Bulkhead::new("exports", 4, 16, Duration::from_secs(1));
//! let rows = bulkhead.run(async { 42 }).await.expect("a slot");
//! assert_eq!(rows, 42);
//! # }
//! ```

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Error, Result};

/// Bounded concurrency with a bounded, timed queue. Cheap to clone; clones share the slots.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    name: Arc<str>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_concurrent: usize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// A running slot; freed on drop.
#[derive(Debug)]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Bulkhead {
    /// `max_concurrent` slots (at least 1), `max_queue` waiting places.
    pub fn new(
        name: &str,
        max_concurrent: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            name: name.into(),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_concurrent,
            max_queue,
            queue_timeout,
        }
    }

    /// Takes a slot, waiting in the queue if there is room there.
    pub async fn acquire(&self) -> Result<BulkheadPermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(BulkheadPermit { _permit: permit });
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_queue).then_some(n + 1)
            });
        if queued.is_err() {
            return Err(Error::BulkheadFull {
                name: self.name.to_string(),
                max_concurrent: self.max_concurrent,
                max_queue: self.max_queue,
            });
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(BulkheadPermit { _permit: permit }),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Error::BulkheadTimeout {
                name: self.name.to_string(),
                waited: self.queue_timeout,
            }),
        }
    }

    /// Runs `fut` in a slot.
    pub async fn run<T>(&self, fut: impl Future<Output = T>) -> Result<T> {
        let _permit = self.acquire().await?;
        Ok(fut.await)
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn full_slots_and_queue_give_typed_errors() {
        let b = Bulkhead::new("t", 2, 1, Duration::from_secs(1));
        let p1 = b.acquire().await.expect("slot 1");
        let _p2 = b.acquire().await.expect("slot 2");
        assert_eq!(b.running(), 2);

        let queued = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        while b.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(b.acquire().await, Err(Error::BulkheadFull { .. })));
        drop(p1);
        queued
            .await
            .expect("join")
            .expect("the queued caller got the freed slot");
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_waits_no_longer_than_the_timeout() {
        let b = Bulkhead::new("t", 1, 5, Duration::from_millis(200));
        let _busy = b.acquire().await.expect("slot");
        let start = tokio::time::Instant::now();
        let err = b.acquire().await.expect_err("timeout");
        assert!(matches!(err, Error::BulkheadTimeout { .. }), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(b.waiting(), 0);
    }
}
