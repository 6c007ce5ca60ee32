//! The service's settings: defaults here, then an optional TOML file (`SLUICE_CONFIG`), then
//! the usual names (`KAFKA_BROKERS`, `MONGODB_URL`, `PORT`), then `SLUICE_ANALYTICS_<KEY>`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::config::{ConfigLoader, Secret};

use crate::{Error, Result};

/// Every setting, with the name it is read under (lower case here, upper case in the env).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Interface to listen on.
    pub host: String,
    /// HTTP port for `/health`, `/ready`, `/metrics` (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Kafka bootstrap servers (`KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// MongoDB (`MONGODB_URL`).
    pub mongodb_url: Secret<String>,
    /// Database holding the results and the state (`stock_management`).
    pub database: String,
    /// Kafka consumer group id; replicas share it.
    pub group_id: String,
    /// Prepended to every topic name below (e.g. `staging.`).
    pub topic_prefix: String,
    /// Sales topic.
    pub sales_topic: String,
    /// Inventory topic.
    pub inventory_topic: String,
    /// Clients topic.
    pub clients_topic: String,
    /// Where malformed messages go, with the reason in the `reason` header.
    pub dead_letter_topic: String,
    /// Longest time between flushes while input arrives, ms.
    pub flush_interval_ms: u64,
    /// Messages that trigger a flush before the interval is up; also how far consuming runs
    /// ahead of a flush being written (a bound on unwritten work, and so on what a crash
    /// replays beyond that flush).
    pub flush_batch_size: usize,
    /// Changed keys that trigger a flush, and how many consuming may change ahead of a flush
    /// being written: what a flush holds in memory and writes follows the keys it changed.
    pub flush_max_keys: usize,
    /// Log entries of a partition after which they are folded into one document per key.
    pub compact_after_entries: usize,
    /// Minutes of the per-category rollup kept, in hours before "now": older minutes leave
    /// the state and `sales_by_category_minute`, and a late sale does not bring them back.
    /// 0 keeps every minute.
    pub rollup_retention_hours: u64,
    /// Kafka session timeout, ms: how soon a dead replica's partitions move.
    pub kafka_session_timeout_ms: u64,
    /// Longest time the consumer may go without taking a message, ms (librdkafka's
    /// `max.poll.interval.ms`): past it, as while MongoDB is down and consuming waits, the
    /// replica leaves the group (its partitions go to the others) and joins again once it
    /// consumes. At least the session timeout.
    pub kafka_max_poll_interval_ms: u64,
    /// Fixed "now" (RFC 3339) for expiry and movement rules; unset = the system clock.
    pub now: Option<String>,
    /// Products in `product_winners`.
    pub top_products: usize,
    /// Expiry within this many days puts a product at risk.
    pub expiry_window_days: i64,
    /// No movement for this many days puts a product at risk.
    pub stale_movement_days: i64,
    /// Revenue from which a client is eligible for the promotion, in cents.
    pub promo_min_revenue_cents: i64,
    /// Loyalty tiers that are eligible whatever the revenue (comma-separated).
    pub promo_tiers: String,
    /// Longest wait for the final flush at shutdown, ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8082,
            kafka_brokers: "localhost:9092".into(),
            mongodb_url: Secret::new("mongodb://localhost:27017/?directConnection=true".into()),
            database: "stock_management".into(),
            group_id: "sluice-analytics".into(),
            topic_prefix: String::new(),
            sales_topic: "topic-raw-sales".into(),
            inventory_topic: "topic-inventory-updates".into(),
            clients_topic: "topic-clients".into(),
            dead_letter_topic: "topic-analytics-dead-letters".into(),
            flush_interval_ms: 200,
            flush_batch_size: 1_000_000,
            flush_max_keys: 250_000,
            rollup_retention_hours: 168,
            compact_after_entries: 500_000,
            kafka_session_timeout_ms: 10_000,
            kafka_max_poll_interval_ms: 300_000,
            now: None,
            top_products: 10,
            expiry_window_days: 7,
            stale_movement_days: 30,
            promo_min_revenue_cents: 100_000,
            promo_tiers: "gold,platinum".into(),
            shutdown_timeout_ms: 15_000,
        }
    }
}

impl Config {
    /// Reads the environment (and `SLUICE_CONFIG`, a TOML file, if set) and validates.
    pub fn from_env() -> Result<Self> {
        let mut loader = ConfigLoader::new(&Self::default());
        if let Ok(file) = std::env::var("SLUICE_CONFIG") {
            loader = loader.file(file);
        }
        let config: Self = loader
            .env_names(&["KAFKA_BROKERS", "MONGODB_URL", "PORT"])
            .env_prefixed("SLUICE_ANALYTICS_")
            .load()?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but make no sense, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |setting: &'static str, reason: &str| Error::Config {
            setting,
            reason: reason.to_owned(),
        };
        if self.kafka_brokers.trim().is_empty() {
            return Err(invalid("KAFKA_BROKERS", "must name at least one broker"));
        }
        let url = self.mongodb_url.expose();
        if !(url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")) {
            return Err(invalid(
                "MONGODB_URL",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        let names = [
            ("SLUICE_ANALYTICS_DATABASE", &self.database),
            ("SLUICE_ANALYTICS_GROUP_ID", &self.group_id),
            ("SLUICE_ANALYTICS_SALES_TOPIC", &self.sales_topic),
            ("SLUICE_ANALYTICS_INVENTORY_TOPIC", &self.inventory_topic),
            ("SLUICE_ANALYTICS_CLIENTS_TOPIC", &self.clients_topic),
            (
                "SLUICE_ANALYTICS_DEAD_LETTER_TOPIC",
                &self.dead_letter_topic,
            ),
        ];
        for (name, value) in names {
            if value.trim().is_empty() {
                return Err(invalid(name, "must not be empty"));
            }
        }
        let positive = [
            ("SLUICE_ANALYTICS_FLUSH_INTERVAL_MS", self.flush_interval_ms),
            (
                "SLUICE_ANALYTICS_FLUSH_BATCH_SIZE",
                self.flush_batch_size as u64,
            ),
            (
                "SLUICE_ANALYTICS_FLUSH_MAX_KEYS",
                self.flush_max_keys as u64,
            ),
            (
                "SLUICE_ANALYTICS_COMPACT_AFTER_ENTRIES",
                self.compact_after_entries as u64,
            ),
            (
                "SLUICE_ANALYTICS_KAFKA_SESSION_TIMEOUT_MS",
                self.kafka_session_timeout_ms,
            ),
            ("SLUICE_ANALYTICS_TOP_PRODUCTS", self.top_products as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        // librdkafka refuses to create the consumer otherwise, with its own setting's name.
        if self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms {
            return Err(invalid(
                "SLUICE_ANALYTICS_KAFKA_MAX_POLL_INTERVAL_MS",
                "must be at least SLUICE_ANALYTICS_KAFKA_SESSION_TIMEOUT_MS",
            ));
        }
        if self.expiry_window_days < 0 || self.stale_movement_days < 0 {
            return Err(invalid(
                "SLUICE_ANALYTICS_EXPIRY_WINDOW_DAYS",
                "day windows must be 0 or more",
            ));
        }
        // A century at most: the cut-off is computed in minutes without overflow.
        if self.rollup_retention_hours > 876_000 {
            return Err(invalid(
                "SLUICE_ANALYTICS_ROLLUP_RETENTION_HOURS",
                "must be 0 (keep every minute) to 876000 (a century)",
            ));
        }
        self.fixed_now()?;
        Ok(())
    }

    /// The fixed "now", if one is set.
    pub fn fixed_now(&self) -> Result<Option<DateTime<Utc>>> {
        self.now
            .as_deref()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| Error::Config {
                        setting: "SLUICE_ANALYTICS_NOW",
                        reason: format!("not an RFC 3339 date-time: {e}"),
                    })
            })
            .transpose()
    }

    /// `topic_prefix` + the topic names: (sales, inventory, clients, dead letters).
    pub fn topics(&self) -> Topics {
        let p = &self.topic_prefix;
        Topics {
            sales: format!("{p}{}", self.sales_topic),
            inventory: format!("{p}{}", self.inventory_topic),
            clients: format!("{p}{}", self.clients_topic),
            dead_letters: format!("{p}{}", self.dead_letter_topic),
        }
    }

    /// The eligible tiers, lower-cased.
    pub(crate) fn promo_tier_list(&self) -> Vec<String> {
        self.promo_tiers
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub(crate) fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

/// The full topic names in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Sales (`topic-raw-sales`).
    pub sales: String,
    /// Inventory updates.
    pub inventory: String,
    /// Clients.
    pub clients: String,
    /// Dead letters.
    pub dead_letters: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("valid defaults");
    }

    #[test]
    fn a_wrong_mongo_url_names_the_variable() {
        let config = Config {
            mongodb_url: Secret::new("postgres://x".into()),
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("MONGODB_URL"), "{err}");
    }

    #[test]
    fn a_retention_beyond_a_century_names_its_setting() {
        let err = Config {
            rollup_retention_hours: 876_001,
            ..Config::default()
        }
        .validate()
        .expect_err("too long");
        assert!(err.to_string().contains("ROLLUP_RETENTION_HOURS"), "{err}");
    }

    #[test]
    fn zero_flush_interval_and_bad_now_name_their_setting() {
        let config = Config {
            flush_interval_ms: 0,
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("FLUSH_INTERVAL_MS"), "{err}");
        let config = Config {
            flush_max_keys: 0,
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("FLUSH_MAX_KEYS"), "{err}");
        let config = Config {
            now: Some("yesterday".into()),
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("SLUICE_ANALYTICS_NOW"), "{err}");
    }

    #[test]
    fn a_poll_interval_shorter_than_the_session_names_its_setting() {
        let err = Config {
            kafka_session_timeout_ms: 10_000,
            kafka_max_poll_interval_ms: 9_999,
            ..Config::default()
        }
        .validate()
        .expect_err("shorter than the session");
        assert!(
            err.to_string()
                .contains("SLUICE_ANALYTICS_KAFKA_MAX_POLL_INTERVAL_MS"),
            "{err}"
        );
    }

    #[test]
    fn prefix_applies_to_every_topic() {
        let config = Config {
            topic_prefix: "t.".into(),
            ..Config::default()
        };
        let topics = config.topics();
        assert_eq!(topics.sales, "t.topic-raw-sales");
        assert_eq!(topics.dead_letters, "t.topic-analytics-dead-letters");
    }
}
