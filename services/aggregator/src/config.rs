//! The aggregator's settings: defaults here, then an optional TOML file (`SLUICE_CONFIG`), then
//! the seed's variables (`DATABASE_URL`, `REDIS_URL`, `WORKER_COUNT`, `PORT`), then
//! `SLUICE_AGGREGATOR_<KEY>` for everything.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::config::{ConfigLoader, Secret, invalid};

/// Every setting, with the name it is read under (lower case here, upper case in the env).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Interface to listen on.
    pub host: String,
    /// HTTP port (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Postgres (`DATABASE_URL`).
    pub database_url: Secret<String>,
    /// Most connections in the Postgres pool of the workers and the AMQP ingress.
    pub database_pool_size: u32,
    /// Most connections in the separate Postgres pool of `/events` and `/stats`, so reads can
    /// never take the connections the writers need.
    pub database_read_pool_size: u32,
    /// Redis (`REDIS_URL`).
    pub redis_url: Secret<String>,
    /// Consumers of the stream in this process (`WORKER_COUNT`).
    pub worker_count: usize,
    /// The Redis stream holding accepted batches.
    pub stream_key: String,
    /// Its consumer group.
    pub consumer_group: String,
    /// Prefix of this process's consumer names (`<prefix>-<worker>`); keep it stable across
    /// restarts so a restarted process takes back its own unacknowledged entries at once.
    /// Default: the host name.
    pub consumer_name: Option<String>,
    /// Stream entries a worker reads at once (each entry is one published batch).
    pub read_count: usize,
    /// Most events one transaction writes: entries read at once are written in rounds of up
    /// to this many events (an entry is never split). Smaller rounds hold their new keys
    /// locked for less time, so concurrent rounds with shared duplicates wait less.
    pub round_events: usize,
    /// How long a read waits for new entries, ms.
    pub read_block_ms: u64,
    /// Entries another consumer left unacknowledged this long are claimed, ms.
    pub claim_idle_ms: u64,
    /// Stream entries (accepted, not yet stored) above which `/publish` answers 503.
    pub high_water_mark: u64,
    /// `/publish` requests handled at once; more are shed with 503 before their body is read.
    pub max_publish_in_flight: usize,
    /// How long `/publish` waits for Redis before answering 503, ms.
    pub publish_timeout_ms: u64,
    /// Largest request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// Most events in one request (422 above).
    pub max_batch_events: usize,
    /// Largest serialized payload of one event, bytes (422 above).
    pub max_payload_bytes: usize,
    /// Requests per second per client address; 0 turns the limit off (429 above).
    pub rate_limit_per_client: f64,
    /// Requests a client may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Longest time for a whole request, ms (408 after).
    pub request_timeout_ms: u64,
    /// How long to keep the record of consumed entries, hours (must exceed any redelivery).
    pub consumed_retention_hours: u64,
    /// Optional RabbitMQ ingress: consumed when set.
    pub amqp_url: Option<Secret<String>>,
    /// The durable queue consumed by the AMQP ingress.
    pub amqp_queue: String,
    /// Unacknowledged AMQP deliveries at most.
    pub amqp_prefetch: u16,
    /// Longest wait for work in flight at shutdown, ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            database_url: Secret::new("postgres://sluice:sluice@localhost:5432/sluice".into()),
            database_pool_size: 16,
            database_read_pool_size: 4,
            redis_url: Secret::new("redis://localhost:6379".into()),
            worker_count: 4,
            stream_key: "sluice:events".into(),
            consumer_group: "aggregator".into(),
            consumer_name: None,
            read_count: 20,
            round_events: 2_000,
            read_block_ms: 1000,
            claim_idle_ms: 30_000,
            high_water_mark: 100_000,
            max_publish_in_flight: 512,
            publish_timeout_ms: 1000,
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 10_000,
            max_payload_bytes: 64 * 1024,
            rate_limit_per_client: 0.0,
            rate_limit_burst: 100,
            request_timeout_ms: 30_000,
            consumed_retention_hours: 24,
            amqp_url: None,
            amqp_queue: "sluice.aggregator.events".into(),
            amqp_prefetch: 200,
            shutdown_timeout_ms: 30_000,
        }
    }
}

impl Config {
    /// Reads the environment (and `SLUICE_CONFIG`, a TOML file, if set) and validates.
    pub fn from_env() -> sluice_core::Result<Self> {
        let mut loader = ConfigLoader::new(&Self::default());
        if let Ok(file) = std::env::var("SLUICE_CONFIG") {
            loader = loader.file(file);
        }
        let config: Self = loader
            .env_names(&["DATABASE_URL", "REDIS_URL", "WORKER_COUNT", "PORT"])
            .env_prefixed("SLUICE_AGGREGATOR_")
            .load()?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but make no sense, naming the setting.
    pub fn validate(&self) -> sluice_core::Result<()> {
        let positive = [
            ("WORKER_COUNT", self.worker_count as u64),
            ("SLUICE_AGGREGATOR_READ_COUNT", self.read_count as u64),
            ("SLUICE_AGGREGATOR_ROUND_EVENTS", self.round_events as u64),
            ("SLUICE_AGGREGATOR_HIGH_WATER_MARK", self.high_water_mark),
            (
                "SLUICE_AGGREGATOR_MAX_PUBLISH_IN_FLIGHT",
                self.max_publish_in_flight as u64,
            ),
            (
                "SLUICE_AGGREGATOR_DATABASE_READ_POOL_SIZE",
                u64::from(self.database_read_pool_size),
            ),
            (
                "SLUICE_AGGREGATOR_MAX_BODY_BYTES",
                self.max_body_bytes as u64,
            ),
            (
                "SLUICE_AGGREGATOR_MAX_BATCH_EVENTS",
                self.max_batch_events as u64,
            ),
            (
                "SLUICE_AGGREGATOR_MAX_PAYLOAD_BYTES",
                self.max_payload_bytes as u64,
            ),
            (
                "SLUICE_AGGREGATOR_DATABASE_POOL_SIZE",
                u64::from(self.database_pool_size),
            ),
            (
                "SLUICE_AGGREGATOR_PUBLISH_TIMEOUT_MS",
                self.publish_timeout_ms,
            ),
            (
                "SLUICE_AGGREGATOR_REQUEST_TIMEOUT_MS",
                self.request_timeout_ms,
            ),
            (
                "SLUICE_AGGREGATOR_AMQP_PREFETCH",
                u64::from(self.amqp_prefetch),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if !(self.rate_limit_per_client.is_finite() && self.rate_limit_per_client >= 0.0) {
            return Err(invalid(
                "SLUICE_AGGREGATOR_RATE_LIMIT_PER_CLIENT",
                "must be 0 (off) or more",
            ));
        }
        for (name, url, schemes) in [
            (
                "DATABASE_URL",
                self.database_url.expose(),
                &["postgres://", "postgresql://"][..],
            ),
            (
                "REDIS_URL",
                self.redis_url.expose(),
                &["redis://", "rediss://", "unix://"][..],
            ),
        ] {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(invalid(name, format!("must start with one of {schemes:?}")));
            }
        }
        if self.stream_key.is_empty() || self.consumer_group.is_empty() {
            return Err(invalid(
                "SLUICE_AGGREGATOR_STREAM_KEY",
                "stream key and group must not be empty",
            ));
        }
        Ok(())
    }

    /// Consumer name prefix: the setting, else the host name.
    pub fn consumer_prefix(&self) -> String {
        self.consumer_name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "aggregator".into())
        })
    }

    pub(crate) fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("valid defaults");
    }

    #[test]
    fn zero_workers_names_the_seed_variable() {
        let config = Config {
            worker_count: 0,
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("WORKER_COUNT"), "{err}");
    }

    #[test]
    fn a_wrong_url_scheme_names_the_variable() {
        let config = Config {
            redis_url: Secret::new("http://x".into()),
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .expect_err("invalid")
                .to_string()
                .contains("REDIS_URL")
        );
    }
}
