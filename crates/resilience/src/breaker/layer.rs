//! The breaker as a tower [`Layer`], to guard an HTTP client or an axum route.
//!
//! Errors of the inner service count as failures; [`CircuitBreakerLayer::classify_responses`]
//! adds responses that should count too (e.g. HTTP 5xx). The service's error type is
//! [`BoxError`], as with tower's own middleware; in axum, turn a rejection into a 503 with
//! `HandleErrorLayer`.
//!
//! ```
//! use sluice_resilience::{BreakerConfig, CircuitBreaker, breaker::CircuitBreakerLayer};
//! use tower::{ServiceBuilder, service_fn};
//!
//! let breaker = CircuitBreaker::new("payments", BreakerConfig::http_api());
//! let client = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker).classify_responses(|status: &u16| *status >= 500))
//!     .service(service_fn(|_req: ()| async { Ok::<u16, std::io::Error>(200) }));
//! # let _ = client;
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{BoxError, Layer, Service};

use super::CircuitBreaker;

/// Decides whether a successful response still counts as a failure.
pub trait Classify<R> {
    /// True when `response` should count as a failure.
    fn is_failure(&self, response: &R) -> bool;
}

/// Only errors count as failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsOnly;

impl<R> Classify<R> for ErrorsOnly {
    fn is_failure(&self, _: &R) -> bool {
        false
    }
}

impl<R, F: Fn(&R) -> bool> Classify<R> for F {
    fn is_failure(&self, response: &R) -> bool {
        self(response)
    }
}

/// Wraps a service with a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsOnly> {
    breaker: CircuitBreaker,
    classify: C,
}

impl CircuitBreakerLayer {
    /// Errors of the inner service count as failures.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classify: ErrorsOnly,
        }
    }

    /// Also count responses for which `classify` returns true.
    pub fn classify_responses<C>(self, classify: C) -> CircuitBreakerLayer<C> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = ErrorsOnly> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    C: Classify<S::Response> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => return Box::pin(std::future::ready(Err(rejected.into()))),
        };
        let call = self.inner.call(req);
        let classify = self.classify.clone();
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    if classify.is_failure(&response) {
                        permit.failure();
                    } else {
                        permit.success();
                    }
                    Ok(response)
                }
                Err(err) => {
                    permit.failure();
                    Err(err.into())
                }
            }
        })
    }
}
