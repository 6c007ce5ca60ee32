//! The dashboard's Prometheus metrics (HTTP counts and latency come from sluice-core).

use prometheus::{IntCounter, IntGauge};
use sluice_core::telemetry::Metrics;

use crate::Result;

/// Counters and gauges of the dashboard.
#[derive(Debug, Clone)]
pub struct DashboardMetrics {
    /// WebSocket clients connected now.
    pub ws_clients: IntGauge,
    /// Frames sent to WebSocket clients.
    pub ws_sent: IntCounter,
    /// Frames a slow client skipped (it got the latest state instead).
    pub ws_skipped: IntCounter,
    /// Clients disconnected because they did not take a frame in time or stopped answering.
    pub ws_dropped: IntCounter,
    /// WebSocket upgrades refused because the session had its most sockets open.
    pub ws_refused: IntCounter,
    /// Refused logins (wrong name or password).
    pub login_failures: IntCounter,
    /// State-changing requests refused for a missing or wrong CSRF token.
    pub csrf_refused: IntCounter,
    /// Accountant messages published to Kafka.
    pub published: IntCounter,
}

impl DashboardMetrics {
    /// Registers every metric in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self> {
        Ok(Self {
            ws_clients: metrics.gauge("dashboard_ws_clients", "WebSocket clients connected")?,
            ws_sent: metrics.counter(
                "dashboard_ws_sent_total",
                "Frames sent to WebSocket clients",
            )?,
            ws_skipped: metrics.counter(
                "dashboard_ws_skipped_total",
                "Frames a slow WebSocket client skipped to get the latest state",
            )?,
            ws_dropped: metrics.counter(
                "dashboard_ws_dropped_total",
                "WebSocket clients disconnected for not keeping up or not answering",
            )?,
            ws_refused: metrics.counter(
                "dashboard_ws_refused_total",
                "WebSocket upgrades refused: the session had SLUICE_DASHBOARD_WS_PER_SESSION open",
            )?,
            login_failures: metrics.counter("dashboard_login_failures_total", "Refused logins")?,
            csrf_refused: metrics.counter(
                "dashboard_csrf_refused_total",
                "Requests refused for a missing or wrong CSRF token",
            )?,
            published: metrics.counter(
                "dashboard_published_total",
                "Accountant messages published to Kafka",
            )?,
        })
    }
}
