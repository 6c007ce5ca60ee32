//! Logs through `tracing` (JSON unless a person is watching), and Prometheus metrics in a
//! registry the app owns.
//!
//! The registry is a value, not a global: two apps in one test process keep separate counts.

use std::{io::IsTerminal, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};
use tracing_subscriber::{EnvFilter, fmt};

use crate::Result;

/// How log lines are written: one JSON object per line for collectors, or text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (`docker logs`, files, pipes, the testkit's child services).
    Json,
    /// `tracing`'s human-readable lines, coloured on a terminal.
    Text,
}

impl LogFormat {
    /// The environment variable that overrides the choice: `json`, `text` or `auto`.
    pub const ENV: &'static str = "SLUICE_LOG_FORMAT";

    /// `setting` (the value of [`Self::ENV`]) when it is `json` or `text`; otherwise (unset,
    /// empty, `auto`, or a value [`Self::is_valid_setting`] refuses) text when the log stream is a
    /// terminal and JSON when it is not.
    pub fn choose(setting: Option<&str>, is_terminal: bool) -> Self {
        match setting.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("json") => Self::Json,
            Some("text") => Self::Text,
            _ if is_terminal => Self::Text,
            _ => Self::Json,
        }
    }

    /// Whether `setting` is a value [`Self::choose`] understands (so a typo can be reported).
    pub fn is_valid_setting(setting: &str) -> bool {
        matches!(
            setting.trim().to_ascii_lowercase().as_str(),
            "" | "auto" | "json" | "text"
        )
    }
}

/// Sends logs to stdout, filtered by `RUST_LOG` (default `info`): JSON lines when stdout is not a
/// terminal (containers, files, pipes, tests), readable text when it is; `SLUICE_LOG_FORMAT=json`
/// or `text` overrides the choice.
///
/// The stream that decides is stdout because the logs go there: `sluice-producer … | jq` gets
/// JSON although stderr is a terminal, and the testkit, which reads its children's stdout, gets
/// JSON even when the tests run with `--nocapture` in a terminal.
///
/// Call it after the command line is parsed, so `--help` and argument errors are printed alone.
/// Safe to call more than once (tests do): only the first call installs the subscriber.
pub fn init_logs(service: &str) {
    let setting = std::env::var(LogFormat::ENV).ok();
    let is_terminal = std::io::stdout().is_terminal();
    let format = LogFormat::choose(setting.as_deref(), is_terminal);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(is_terminal).try_init(),
    }
    .is_ok();
    if installed {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            "logging started"
        );
        if let Some(bad) = setting.filter(|s| !LogFormat::is_valid_setting(s)) {
            tracing::warn!(
                value = %bad,
                "{} must be json, text or auto; chose by the terminal instead",
                LogFormat::ENV
            );
        }
    }
}

/// The former name of [`init_logs`], kept for the binaries that still call it; the same
/// behaviour (JSON unless stdout is a terminal).
pub fn init_json_logs(service: &str) {
    init_logs(service);
}

/// The app's Prometheus registry, served at `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A fresh registry holding `sluice_build_info{service, version} 1`.
    pub fn new(service: &str) -> Result<Self> {
        let metrics = Self {
            registry: Registry::new(),
        };
        let info = IntGaugeVec::new(
            Opts::new("sluice_build_info", "Service name and version; always 1"),
            &["service", "version"],
        )?;
        info.with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.register(info)?;
        Ok(metrics)
    }

    /// Registers a collector (a counter, a gauge, a histogram or a custom one).
    pub fn register<C: Collector + Clone + 'static>(&self, collector: C) -> Result<C> {
        self.registry.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    /// Registers a new counter.
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter> {
        self.register(IntCounter::new(name, help)?)
    }

    /// Registers a new gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge> {
        self.register(IntGauge::new(name, help)?)
    }

    /// Registers a new histogram with the given bucket bounds.
    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }

    /// The underlying registry, for crates that register their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only for invalid metric families, which register() refused.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(%err, "failed to encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// `GET /metrics`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
    }
}

/// Request counts and latencies by route and status, as an axum middleware.
///
/// ```
/// # use axum::{Router, routing::get, middleware};
/// # use sluice_core::telemetry::{HttpMetrics, Metrics};
/// let metrics = Metrics::new("demo").expect("registry");
/// let http = HttpMetrics::new(&metrics).expect("metrics");
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hi" }))
///     .layer(middleware::from_fn_with_state(http, HttpMetrics::track));
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers `http_requests_total` and `http_request_duration_seconds`.
    pub fn new(metrics: &Metrics) -> Result<Self> {
        let labels = ["method", "route", "status"];
        let requests = metrics.register(IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &labels,
        )?)?;
        let duration = metrics.register(HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &labels,
        )?)?;
        Ok(Self { requests, duration })
    }

    /// The middleware function; use with `axum::middleware::from_fn_with_state`.
    pub async fn track(State(this): State<Self>, req: Request, next: Next) -> Response {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned();
        let method = req.method().as_str().to_owned();
        let start = Instant::now();
        let response = next.run(req).await.into_response();
        let status = response.status().as_u16().to_string();
        let labels = [method.as_str(), route.as_str(), status.as_str()];
        this.requests.with_label_values(&labels).inc();
        this.duration
            .with_label_values(&labels)
            .observe(start.elapsed().as_secs_f64());
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, middleware};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn serves_registered_metrics_and_counts_requests() {
        let metrics = Metrics::new("test").expect("registry");
        let http = HttpMetrics::new(&metrics).expect("http metrics");
        let app: Router = Router::new()
            .route("/hello/{name}", get(|| async { "hi" }))
            .merge(metrics.router())
            .layer(middleware::from_fn_with_state(http, HttpMetrics::track));
        let req = Request::get("/hello/x")
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let req = Request::get("/metrics")
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("response");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf8");
        assert!(
            text.contains(r#"sluice_build_info{service="test""#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/hello/{name}",status="200"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn two_registries_do_not_share_counts() {
        let a = Metrics::new("a").expect("a");
        let b = Metrics::new("b").expect("b");
        assert!(a.render().contains(r#"service="a""#));
        assert!(!b.render().contains(r#"service="a""#));
    }

    #[test]
    fn logs_are_json_unless_a_terminal_watches() {
        assert_eq!(LogFormat::choose(None, false), LogFormat::Json);
        assert_eq!(LogFormat::choose(None, true), LogFormat::Text);
        assert_eq!(LogFormat::choose(Some(""), true), LogFormat::Text);
        assert_eq!(LogFormat::choose(Some("auto"), false), LogFormat::Json);
    }

    #[test]
    fn the_log_format_setting_overrides_the_terminal() {
        assert_eq!(LogFormat::choose(Some("json"), true), LogFormat::Json);
        assert_eq!(LogFormat::choose(Some(" TEXT "), false), LogFormat::Text);
        // A typo falls back to the automatic choice (and init_logs warns about it).
        assert_eq!(LogFormat::choose(Some("jsno"), true), LogFormat::Text);
        assert_eq!(LogFormat::choose(Some("jsno"), false), LogFormat::Json);
        assert!(LogFormat::is_valid_setting("Json"));
        assert!(!LogFormat::is_valid_setting("jsno"));
    }

    #[test]
    fn refuses_a_duplicate_metric() {
        let m = Metrics::new("dup").expect("registry");
        let c = || IntCounterVec::new(Opts::new("x_total", "x"), &["a"]).expect("counter");
        m.register(c()).expect("first");
        assert!(m.register(c()).is_err());
    }
}
