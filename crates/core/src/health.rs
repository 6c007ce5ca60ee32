//! `/health` and `/ready`: each dependency is probed, and the body names the one that failed.
//!
//! `/health` answers 200 when every probe passes and 503 otherwise, with one field per
//! dependency (`"database": "connected"`, as the seed's clients expect) and the reasons under
//! `errors`. `/ready` adds the app's own readiness flag, which is false while it starts and
//! again once it begins to shut down, so a load balancer stops sending it work.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, http::StatusCode, routing::get};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The dependency probes of an app and its readiness flag. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    probes: Vec<(String, Probe)>,
    ready: Arc<AtomicBool>,
    timeout: Duration,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.probes.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Health")
            .field("probes", &names)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of probing every dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Dependency name → `None` when it answered, `Some(reason)` when it did not.
    pub failures: BTreeMap<String, Option<String>>,
}

impl HealthReport {
    /// True when every dependency answered.
    pub fn healthy(&self) -> bool {
        self.failures.values().all(Option::is_none)
    }

    /// The JSON body of `/health`.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        let status = if self.healthy() {
            "healthy"
        } else {
            "unhealthy"
        };
        body.insert("status".into(), status.into());
        let mut errors = Map::new();
        for (name, failure) in &self.failures {
            let state = if failure.is_some() {
                "disconnected"
            } else {
                "connected"
            };
            body.insert(name.clone(), state.into());
            if let Some(reason) = failure {
                errors.insert(name.clone(), reason.clone().into());
            }
        }
        if !errors.is_empty() {
            body.insert("errors".into(), Value::Object(errors));
        }
        body.insert("timestamp".into(), chrono::Utc::now().to_rfc3339().into());
        Value::Object(body)
    }
}

impl Health {
    /// No probes, not ready yet, a 2 s timeout per probe.
    pub fn new() -> Self {
        Self {
            probes: Vec::new(),
            ready: Arc::new(AtomicBool::new(false)),
            timeout: Duration::from_secs(2),
        }
    }

    /// Adds a probe: `Ok(())` means the dependency answered.
    pub fn with_probe<F, Fut>(mut self, name: &str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes
            .push((name.to_owned(), Arc::new(move || probe().boxed())));
        self
    }

    /// How long a probe may take before it counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Marks the app ready (started) or not (starting, or shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The readiness flag.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Runs every probe concurrently, each bounded by the timeout.
    pub async fn report(&self) -> HealthReport {
        let checks = self.probes.iter().map(|(name, probe)| async move {
            let outcome = match tokio::time::timeout(self.timeout, probe()).await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some(reason),
                Err(_) => Some(format!("no answer within {:?}", self.timeout)),
            };
            (name.clone(), outcome)
        });
        HealthReport {
            failures: futures::future::join_all(checks)
                .await
                .into_iter()
                .collect(),
        }
    }

    /// `GET /health` and `GET /ready`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let (h, r) = (self.clone(), self.clone());
        Router::new()
            .route(
                "/health",
                get(move || {
                    let h = h.clone();
                    async move { h.health().await }
                }),
            )
            .route(
                "/ready",
                get(move || {
                    let r = r.clone();
                    async move { r.readiness().await }
                }),
            )
    }

    async fn health(&self) -> (StatusCode, Json<Value>) {
        let report = self.report().await;
        (status_code(report.healthy()), Json(report.to_json()))
    }

    async fn readiness(&self) -> (StatusCode, Json<Value>) {
        if !self.is_ready() {
            let body = json!({"status": "not_ready", "reason": "starting or shutting down"});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
        }
        let report = self.report().await;
        let mut body = report.to_json();
        body["status"] = if report.healthy() {
            "ready"
        } else {
            "not_ready"
        }
        .into();
        (status_code(report.healthy()), Json(body))
    }
}

fn status_code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    async fn get_json(app: Router, path: &str) -> (StatusCode, Value) {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let resp = app.oneshot(req).await.expect("response");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn healthy_when_every_probe_answers() {
        let health = Health::new()
            .with_probe("database", || async { Ok(()) })
            .with_probe("redis", || async { Ok(()) });
        let (status, body) = get_json(health.router(), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["database"], "connected");
        assert_eq!(body["redis"], "connected");
        assert!(body.get("errors").is_none());
    }

    #[tokio::test]
    async fn names_the_failing_dependency() {
        let health = Health::new()
            .with_probe("database", || async { Err("connection refused".into()) })
            .with_probe("redis", || async { Ok(()) });
        let (status, body) = get_json(health.router(), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["database"], "disconnected");
        assert_eq!(body["errors"]["database"], "connection refused");
        assert_eq!(body["redis"], "connected");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_fails_after_the_timeout() {
        let health = Health::new()
            .with_timeout(Duration::from_millis(50))
            .with_probe("kafka", futures::future::pending);
        let report = health.report().await;
        let reason = report.failures["kafka"].clone().expect("failed");
        assert!(reason.contains("no answer"), "{reason}");
    }

    #[tokio::test]
    async fn ready_only_after_start_and_until_shutdown() {
        let health = Health::new().with_probe("db", || async { Ok(()) });
        assert_eq!(
            get_json(health.router(), "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        let (status, body) = get_json(health.router(), "/ready").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ready"))
        );
        health.set_ready(false);
        assert_eq!(
            get_json(health.router(), "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
