//! Named breakers whose state and counts are Prometheus metrics.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::{BreakerConfig, CircuitBreaker, State};
use crate::Result;

/// Creates and keeps the breakers of an app, exporting for each (label `name`):
/// `sluice_circuit_breaker_state` (0 closed, 1 open, 2 half-open),
/// `sluice_circuit_breaker_calls_total{outcome="success"|"failure"}`,
/// `sluice_circuit_breaker_rejections_total` and
/// `sluice_circuit_breaker_transitions_total{from, to}`.
///
/// ```
/// use sluice_resilience::{BreakerConfig, BreakerRegistry};
///
/// let registry = prometheus::Registry::new();
/// let breakers = BreakerRegistry::new(&registry).expect("metrics");
/// let db = breakers.get_or_create("postgres", BreakerConfig::database()).expect("valid");
/// assert_eq!(db.name(), "postgres");
/// assert!(registry.gather().iter().any(|m| m.name() == "sluice_circuit_breaker_state"));
/// ```
#[derive(Debug)]
pub struct BreakerRegistry {
    families: Families,
    breakers: Mutex<HashMap<String, CircuitBreaker>>,
}

#[derive(Debug, Clone)]
struct Families {
    state: IntGaugeVec,
    calls: IntCounterVec,
    rejections: IntCounterVec,
    transitions: IntCounterVec,
}

/// One breaker's metric handles, resolved once so the hot path only increments.
#[derive(Debug)]
pub(super) struct BreakerMetrics {
    name: String,
    pub(super) successes: IntCounter,
    pub(super) failures: IntCounter,
    pub(super) rejections: IntCounter,
    state: IntGauge,
    transitions: IntCounterVec,
}

impl BreakerMetrics {
    pub(super) fn transition(&self, from: State, to: State) {
        self.state.set(i64::from(to.as_u8()));
        self.transitions
            .with_label_values(&[self.name.as_str(), from.as_str(), to.as_str()])
            .inc();
    }
}

impl BreakerRegistry {
    /// Registers the metric families in `registry`.
    pub fn new(registry: &Registry) -> Result<Self> {
        let families = Families {
            state: IntGaugeVec::new(
                Opts::new(
                    "sluice_circuit_breaker_state",
                    "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                ),
                &["name"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "sluice_circuit_breaker_calls_total",
                    "Calls made through the breaker",
                ),
                &["name", "outcome"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new(
                    "sluice_circuit_breaker_rejections_total",
                    "Calls refused because the breaker was open",
                ),
                &["name"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new("sluice_circuit_breaker_transitions_total", "State changes"),
                &["name", "from", "to"],
            )?,
        };
        registry.register(Box::new(families.state.clone()))?;
        registry.register(Box::new(families.calls.clone()))?;
        registry.register(Box::new(families.rejections.clone()))?;
        registry.register(Box::new(families.transitions.clone()))?;
        Ok(Self {
            families,
            breakers: Mutex::new(HashMap::new()),
        })
    }

    /// The breaker called `name`, created with `config` if it does not exist yet (an existing
    /// breaker keeps its config).
    pub fn get_or_create(&self, name: &str, config: BreakerConfig) -> Result<CircuitBreaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = breakers.get(name) {
            return Ok(b.clone());
        }
        config.validate()?;
        let f = &self.families;
        let metrics = BreakerMetrics {
            name: name.to_owned(),
            successes: f.calls.with_label_values(&[name, "success"]),
            failures: f.calls.with_label_values(&[name, "failure"]),
            rejections: f.rejections.with_label_values(&[name]),
            state: f.state.with_label_values(&[name]),
            transitions: f.transitions.clone(),
        };
        metrics.state.set(i64::from(State::Closed.as_u8()));
        let breaker = CircuitBreaker::build(name, config, Some(metrics));
        breakers.insert(name.to_owned(), breaker.clone());
        Ok(breaker)
    }

    /// The breaker called `name`, if any.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        let breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        breakers.get(name).cloned()
    }

    /// Every breaker's name and state, sorted by name (for a status endpoint).
    pub fn states(&self) -> Vec<(String, State)> {
        let breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut states: Vec<_> = breakers
            .iter()
            .map(|(name, b)| (name.clone(), b.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}
