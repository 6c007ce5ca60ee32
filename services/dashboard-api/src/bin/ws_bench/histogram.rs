//! A latency histogram many tasks add to at once: 10 µs buckets up to 200 ms, then 1 ms
//! buckets up to 120 s. A quantile is the upper bound of its bucket.

use std::sync::atomic::{AtomicU64, Ordering};

const FINE_US: u64 = 10;
const FINE_LIMIT_US: u64 = 200_000;
const COARSE_US: u64 = 1_000;
const COARSE_LIMIT_US: u64 = 120_000_000;

pub(crate) struct Histogram {
    fine: Box<[AtomicU64]>,
    coarse: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        let buckets = |n: u64| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            fine: buckets(FINE_LIMIT_US / FINE_US),
            coarse: buckets(COARSE_LIMIT_US / COARSE_US),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, us: u64) {
        let bucket = if us < FINE_LIMIT_US {
            &self.fine[(us / FINE_US) as usize]
        } else {
            &self.coarse[((us / COARSE_US) as usize).min(self.coarse.len() - 1)]
        };
        bucket.fetch_add(1, Ordering::Relaxed);
        // Read first: the maximum rarely moves, and a read does not contend.
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Every bucket with its upper bound, in order.
    fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let fine = self.fine.iter().enumerate();
        let fine = fine.map(|(i, b)| (b.load(Ordering::Relaxed), (i as u64 + 1) * FINE_US));
        let coarse = self.coarse.iter().enumerate();
        let coarse = coarse.map(|(i, b)| (b.load(Ordering::Relaxed), (i as u64 + 1) * COARSE_US));
        // Coarse buckets below the fine limit are never used.
        fine.chain(coarse.skip((FINE_LIMIT_US / COARSE_US) as usize))
    }

    pub(crate) fn count(&self) -> u64 {
        self.buckets().map(|(n, _)| n).sum()
    }

    pub(crate) fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding quantile `q`, µs (never above the maximum).
    pub(crate) fn quantile_us(&self, q: f64) -> u64 {
        let rank = ((self.count() as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (n, upper) in self.buckets() {
            seen += n;
            if seen >= rank {
                return upper.min(self.max_us());
            }
        }
        self.max_us()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Histogram::new();
        for us in [5, 15, 25, 35, 250_000] {
            h.record(us);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile_us(0.5), 30);
        assert_eq!(h.quantile_us(1.0), 250_000);
    }
}
