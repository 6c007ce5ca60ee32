//! Calls and failures over a sliding time window, kept in ten buckets.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug)]
pub(super) struct Window {
    span: Duration,
    origin: Instant,
    bucket_nanos: u128,
    /// Bucket number (since `origin`) of the last record.
    last: u128,
    calls: [u64; BUCKETS],
    failures: [u64; BUCKETS],
}

impl Window {
    pub(super) fn new(span: Duration, now: Instant) -> Self {
        Self {
            span,
            origin: now,
            bucket_nanos: (span.as_nanos() / BUCKETS as u128).max(1),
            last: 0,
            calls: [0; BUCKETS],
            failures: [0; BUCKETS],
        }
    }

    pub(super) fn reset(&mut self, now: Instant) {
        *self = Self::new(self.span, now);
    }

    pub(super) fn record(&mut self, now: Instant, failed: bool) {
        let bucket = now.saturating_duration_since(self.origin).as_nanos() / self.bucket_nanos;
        if bucket > self.last {
            let stale = (bucket - self.last).min(BUCKETS as u128) as usize;
            for i in 1..=stale {
                let idx = ((self.last + i as u128) % BUCKETS as u128) as usize;
                self.calls[idx] = 0;
                self.failures[idx] = 0;
            }
            self.last = bucket;
        }
        let idx = (self.last % BUCKETS as u128) as usize;
        self.calls[idx] += 1;
        self.failures[idx] += u64::from(failed);
    }

    /// (calls, failures) over the window.
    pub(super) fn totals(&self) -> (u64, u64) {
        (self.calls.iter().sum(), self.failures.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_what_left_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), t0);
        w.record(t0, true);
        w.record(t0 + Duration::from_secs(5), false);
        assert_eq!(w.totals(), (2, 1));
        w.record(t0 + Duration::from_millis(10_500), false);
        assert_eq!(w.totals(), (2, 0), "the failure at t0 fell out");
        w.record(t0 + Duration::from_secs(100), false);
        assert_eq!(w.totals(), (1, 0));
    }
}
