//! The aggregator's Prometheus metrics, registered in the app's registry.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Opts};
use sluice_core::telemetry::Metrics;

use crate::Result;

/// Handles to every aggregator metric.
#[derive(Debug, Clone)]
pub struct AggregatorMetrics {
    /// Events accepted by `/publish` or the AMQP ingress (202 / queued).
    pub accepted: IntCounter,
    /// Requests refused, by reason (`validation`, `rate_limited`, `queue_full`, …).
    pub rejected: IntCounterVec,
    /// Events consumed from the queue.
    pub received: IntCounter,
    pub unique: IntCounter,
    pub duplicates: IntCounter,
    /// Queue entries that could not be stored and went to the dead-letter stream or queue.
    pub dead_lettered: IntCounter,
    /// Attempts to dead-letter an entry that failed (the entry stays pending and is retried).
    pub dead_letter_failures: IntCounter,
    /// Rounds of entries split into single entries after Postgres kept refusing them.
    pub rounds_split: IntCounter,
    /// Times the consumer group was found missing (Redis lost its data) and created again.
    pub group_recreated: IntCounter,
    /// Redeliveries recognised as already stored.
    pub redelivered: IntCounter,
    /// Events per database transaction.
    pub batch_size: Histogram,
    /// Time of one database transaction.
    pub commit_seconds: Histogram,
    /// Entries in the stream (accepted, not yet stored).
    pub stream_length: IntGauge,
    /// Entries delivered to a worker and not acknowledged yet.
    pub stream_pending: IntGauge,
}

impl AggregatorMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self> {
        Ok(Self {
            accepted: metrics.counter(
                "sluice_aggregator_events_accepted_total",
                "Events accepted into the queue",
            )?,
            rejected: metrics.register(
                IntCounterVec::new(
                    Opts::new(
                        "sluice_aggregator_requests_rejected_total",
                        "Publish requests refused, by reason",
                    ),
                    &["reason"],
                )
                .map_err(sluice_core::Error::from)?,
            )?,
            received: metrics.counter(
                "sluice_aggregator_events_received_total",
                "Events consumed from the queue",
            )?,
            unique: metrics.counter(
                "sluice_aggregator_events_unique_total",
                "Events stored (first time seen)",
            )?,
            duplicates: metrics.counter(
                "sluice_aggregator_events_duplicate_total",
                "Events dropped as duplicates",
            )?,
            dead_lettered: metrics.counter(
                "sluice_aggregator_dead_lettered_total",
                "Queue entries moved to dead letter",
            )?,
            dead_letter_failures: metrics.counter(
                "sluice_aggregator_dead_letter_failures_total",
                "Attempts to move an entry to the dead-letter stream that failed (the entry stays pending)",
            )?,
            rounds_split: metrics.counter(
                "sluice_aggregator_rounds_split_total",
                "Rounds split into single entries after Postgres kept refusing them",
            )?,
            group_recreated: metrics.counter(
                "sluice_aggregator_consumer_group_recreated_total",
                "Times the consumer group was missing (Redis lost its data) and was created again",
            )?,
            redelivered: metrics.counter(
                "sluice_aggregator_redelivered_entries_total",
                "Queue entries delivered again after being stored (not counted twice)",
            )?,
            batch_size: metrics.histogram(
                "sluice_aggregator_batch_events",
                "Events per database transaction",
                vec![
                    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
                ],
            )?,
            commit_seconds: metrics.histogram(
                "sluice_aggregator_commit_seconds",
                "Duration of one database transaction",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )?,
            stream_length: metrics.gauge(
                "sluice_aggregator_stream_length",
                "Entries in the stream, not yet stored",
            )?,
            stream_pending: metrics.gauge(
                "sluice_aggregator_stream_pending",
                "Entries delivered, not yet acknowledged",
            )?,
        })
    }
}
