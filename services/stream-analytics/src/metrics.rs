//! Prometheus metrics of the service, registered in the app's own registry.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use sluice_core::telemetry::Metrics;

use crate::Result;

/// Counters and gauges the pipeline updates.
#[derive(Debug, Clone)]
pub(crate) struct AnalyticsMetrics {
    /// Messages by topic and outcome (`applied`, `replayed`, `dead_lettered`).
    pub(crate) messages: IntCounterVec,
    /// Messages sent to the dead-letter topic.
    pub(crate) dead_lettered: IntCounter,
    /// Time to write a flush (state, offsets, results).
    pub(crate) flush_seconds: Histogram,
    /// Time to replace a partition's log by a snapshot (beside the flushes).
    pub(crate) compaction_seconds: Histogram,
    /// Unix time of the last flush that wrote or found nothing to write.
    pub(crate) last_flush: IntGauge,
    /// Flush ticks with nothing new: nothing was written.
    pub(crate) idle_flushes: IntCounter,
    /// Documents written (state and results).
    pub(crate) documents_written: IntCounter,
    /// Failed MongoDB operations (retried).
    pub(crate) store_errors: IntCounter,
    /// High watermark minus the next offset to process, per assigned partition.
    pub(crate) lag: IntGaugeVec,
    /// Group rebalances seen by this consumer, by `event` (`assigned`, `revoked`, `failed`).
    pub(crate) rebalances: IntCounterVec,
}

impl AnalyticsMetrics {
    pub(crate) fn new(m: &Metrics) -> Result<Self> {
        Ok(Self {
            messages: m.register(IntCounterVec::new(
                Opts::new(
                    "analytics_messages_total",
                    "Kafka messages consumed, by outcome",
                ),
                &["topic", "outcome"],
            )?)?,
            dead_lettered: m.counter(
                "analytics_dead_lettered_total",
                "Malformed messages sent to the dead-letter topic",
            )?,
            flush_seconds: m.histogram(
                "analytics_flush_duration_seconds",
                "Time to write a flush to MongoDB",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )?,
            compaction_seconds: m.histogram(
                "analytics_compaction_duration_seconds",
                "Time to replace a partition's log by a snapshot of its state",
                vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            last_flush: m.gauge(
                "analytics_last_flush_timestamp_seconds",
                "Unix time of the last completed flush",
            )?,
            idle_flushes: m.counter(
                "analytics_idle_flushes_total",
                "Flush ticks with no new input: nothing written",
            )?,
            documents_written: m.counter(
                "analytics_documents_written_total",
                "State and result documents written to MongoDB",
            )?,
            store_errors: m.counter(
                "analytics_store_errors_total",
                "MongoDB operations that failed and are retried",
            )?,
            lag: m.register(IntGaugeVec::new(
                Opts::new(
                    "analytics_consumer_lag",
                    "Messages behind the high watermark, per assigned partition",
                ),
                &["topic", "partition"],
            )?)?,
            rebalances: m.register(IntCounterVec::new(
                Opts::new(
                    "analytics_rebalances_total",
                    "Consumer group rebalances: partitions assigned to or revoked from this \
                     consumer, or a rebalance that failed",
                ),
                &["event"],
            )?)?,
        })
    }
}
