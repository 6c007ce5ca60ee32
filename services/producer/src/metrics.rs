//! The producer's Prometheus metrics (alert rules in deploy/prometheus/alerts.yml).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use sluice_core::telemetry::Metrics;

use crate::Result;

#[derive(Debug, Clone)]
pub struct ProducerMetrics {
    /// Records read from the source.
    pub read: IntCounter,
    /// Records confirmed by the sink.
    pub published: IntCounter,
    /// Records sent to a dead-letter queue or file.
    pub dead_lettered: IntCounter,
    /// Records waiting to be published again after the broker refused (nacked) them.
    pub retry_queue_size: IntGauge,
    /// 1 while the sink is reachable (RabbitMQ: connected; others: the last batch went through).
    pub connection_state: IntGauge,
    /// 1 while the publishing circuit breaker is open.
    pub circuit_breaker_open: IntGauge,
    pub confirm_timeouts: IntCounter,
    pub health_check_failures: IntCounter,
    /// Time from publishing a batch to its last confirm.
    pub confirm_latency: Histogram,
    /// Records covered by the saved checkpoint.
    pub checkpoint_count: IntGauge,
    /// Failed attempts to deliver a batch (it is sent again).
    pub batch_failures: IntCounter,
}

impl ProducerMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self> {
        let latency = HistogramOpts::new(
            "sluice_producer_confirm_latency_seconds",
            "Publish to last confirm of a batch",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        Ok(Self {
            read: metrics.counter("sluice_producer_read_total", "Records read from the source")?,
            published: metrics.counter(
                "sluice_producer_published_total",
                "Records confirmed by the sink",
            )?,
            dead_lettered: metrics.counter(
                "sluice_producer_dead_lettered_total",
                "Records dead-lettered with a reason",
            )?,
            retry_queue_size: metrics.gauge(
                "sluice_producer_retry_queue_size",
                "Records waiting to be published again",
            )?,
            connection_state: metrics.gauge(
                "sluice_producer_connection_state",
                "1 while connected to the broker",
            )?,
            circuit_breaker_open: metrics.gauge(
                "sluice_producer_circuit_breaker_open",
                "1 while the publishing breaker is open",
            )?,
            confirm_timeouts: metrics.counter(
                "sluice_producer_publisher_confirm_timeouts_total",
                "Publisher confirms that timed out",
            )?,
            health_check_failures: metrics.counter(
                "sluice_producer_health_check_failures_total",
                "Failed sink health checks",
            )?,
            confirm_latency: metrics
                .register(Histogram::with_opts(latency).map_err(sluice_core::Error::from)?)?,
            checkpoint_count: metrics.gauge(
                "sluice_producer_checkpoint_count",
                "Records covered by the saved checkpoint",
            )?,
            batch_failures: metrics.counter(
                "sluice_producer_batch_failures_total",
                "Failed batch deliveries (sent again)",
            )?,
        })
    }
}
