//! The dashboard's settings: defaults here, then an optional TOML file (`SLUICE_CONFIG`), then
//! the common names (`DATABASE_URL`, `REDIS_URL`, `MONGODB_URL`, `KAFKA_BROKERS`, `PORT`), then
//! `SLUICE_DASHBOARD_<KEY>` for everything.

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
    /// Postgres: users, and the aggregator's counters read-only (`DATABASE_URL`).
    pub database_url: Secret<String>,
    /// Most connections in the Postgres pool.
    pub database_pool_size: u32,
    /// Redis: sessions, login limits, the aggregator's streams (`REDIS_URL`).
    pub redis_url: Secret<String>,
    /// Most connections in the Redis pool.
    pub redis_pool_size: usize,
    /// Prefix of every Redis key the dashboard writes (sessions, limits).
    pub redis_prefix: String,
    /// The aggregator's stream (its `:dead` stream holds dead letters).
    pub aggregator_stream: String,
    /// The aggregator's consumer group, for the pending count.
    pub aggregator_group: String,
    /// MongoDB with the analytics results (`MONGODB_URL`).
    pub mongodb_url: Secret<String>,
    /// The results database.
    pub mongodb_database: String,
    /// Kafka bootstrap servers for accountant input (`KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// Prepended to the topic names (as the analytics service's `TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Sales topic.
    pub sales_topic: String,
    /// Inventory topic.
    pub inventory_topic: String,
    /// The analytics service's consumer group, for its lag.
    pub analytics_group: String,
    /// Session cookie name.
    pub cookie_name: String,
    /// Sets `Secure` on the session cookie (keep on behind HTTPS).
    pub cookie_secure: bool,
    /// `Strict` or `Lax`.
    pub cookie_same_site: String,
    /// A session idle this long ends, seconds.
    pub session_idle_secs: u64,
    /// A session ends this long after login whatever its use, seconds.
    pub session_absolute_secs: u64,
    /// Login attempts per minute per client address.
    pub login_per_ip_per_minute: u32,
    /// Login attempts per minute per user name (known or not).
    pub login_per_user_per_minute: u32,
    /// First admin, created at start when no user exists yet.
    pub admin_user: Option<String>,
    /// Its password.
    pub admin_password: Option<Secret<String>>,
    /// How often each watched collection is polled for a change, ms.
    pub poll_interval_ms: u64,
    /// Frames a live-update fan-out shard may fall behind before it skips to the latest state
    /// (a client itself keeps at most one pending frame per topic).
    pub client_queue: usize,
    /// A WebSocket write taking longer than this disconnects the client, ms.
    pub send_timeout_ms: u64,
    /// How often an open WebSocket checks that its session and role still hold and pings its
    /// client, ms (a logout or a demotion closes it within this time; a client that answers
    /// nothing for two of these intervals is disconnected).
    pub ws_recheck_ms: u64,
    /// Most WebSockets one session may have open at once; another upgrade is refused with 429.
    pub ws_per_session: usize,
    /// Most result documents returned per collection.
    pub max_rows: i64,
    /// Longest wait for requests in flight at shutdown, ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8083,
            database_url: Secret::new("postgres://sluice:sluice@localhost:5432/sluice".into()),
            database_pool_size: 8,
            redis_url: Secret::new("redis://localhost:6379".into()),
            redis_pool_size: 16,
            redis_prefix: "sluice:dashboard:".into(),
            aggregator_stream: "sluice:events".into(),
            aggregator_group: "aggregator".into(),
            mongodb_url: Secret::new("mongodb://localhost:27017/?directConnection=true".into()),
            mongodb_database: "stock_management".into(),
            kafka_brokers: "localhost:9092".into(),
            topic_prefix: String::new(),
            sales_topic: "topic-raw-sales".into(),
            inventory_topic: "topic-inventory-updates".into(),
            analytics_group: "sluice-analytics".into(),
            cookie_name: "sluice_session".into(),
            cookie_secure: true,
            cookie_same_site: "Strict".into(),
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            login_per_ip_per_minute: 30,
            login_per_user_per_minute: 5,
            admin_user: None,
            admin_password: None,
            poll_interval_ms: 250,
            client_queue: 16,
            send_timeout_ms: 5_000,
            ws_recheck_ms: 15_000,
            ws_per_session: 8,
            max_rows: 500,
            shutdown_timeout_ms: 10_000,
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
            .env_names(&[
                "DATABASE_URL",
                "REDIS_URL",
                "MONGODB_URL",
                "KAFKA_BROKERS",
                "PORT",
            ])
            .env_prefixed("SLUICE_DASHBOARD_")
            .load()?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but make no sense, naming the setting.
    pub fn validate(&self) -> sluice_core::Result<()> {
        let positive = [
            ("SLUICE_DASHBOARD_SESSION_IDLE_SECS", self.session_idle_secs),
            (
                "SLUICE_DASHBOARD_SESSION_ABSOLUTE_SECS",
                self.session_absolute_secs,
            ),
            (
                "SLUICE_DASHBOARD_LOGIN_PER_IP_PER_MINUTE",
                u64::from(self.login_per_ip_per_minute),
            ),
            (
                "SLUICE_DASHBOARD_LOGIN_PER_USER_PER_MINUTE",
                u64::from(self.login_per_user_per_minute),
            ),
            ("SLUICE_DASHBOARD_POLL_INTERVAL_MS", self.poll_interval_ms),
            ("SLUICE_DASHBOARD_CLIENT_QUEUE", self.client_queue as u64),
            ("SLUICE_DASHBOARD_SEND_TIMEOUT_MS", self.send_timeout_ms),
            ("SLUICE_DASHBOARD_WS_RECHECK_MS", self.ws_recheck_ms),
            (
                "SLUICE_DASHBOARD_WS_PER_SESSION",
                self.ws_per_session as u64,
            ),
            (
                "SLUICE_DASHBOARD_DATABASE_POOL_SIZE",
                u64::from(self.database_pool_size),
            ),
            (
                "SLUICE_DASHBOARD_REDIS_POOL_SIZE",
                self.redis_pool_size as u64,
            ),
            (
                "SLUICE_DASHBOARD_MAX_ROWS",
                u64::try_from(self.max_rows).unwrap_or(0),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if self.session_absolute_secs < self.session_idle_secs {
            return Err(invalid(
                "SLUICE_DASHBOARD_SESSION_ABSOLUTE_SECS",
                "must be at least SLUICE_DASHBOARD_SESSION_IDLE_SECS",
            ));
        }
        if !matches!(self.cookie_same_site.as_str(), "Strict" | "Lax") {
            return Err(invalid(
                "SLUICE_DASHBOARD_COOKIE_SAME_SITE",
                "must be Strict or Lax",
            ));
        }
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "SLUICE_DASHBOARD_COOKIE_NAME",
                "must be letters, digits, `_` or `-`",
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
            (
                "MONGODB_URL",
                self.mongodb_url.expose(),
                &["mongodb://", "mongodb+srv://"][..],
            ),
        ] {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(invalid(name, format!("must start with one of {schemes:?}")));
            }
        }
        for (name, value) in [
            ("KAFKA_BROKERS", &self.kafka_brokers),
            ("SLUICE_DASHBOARD_MONGODB_DATABASE", &self.mongodb_database),
            ("SLUICE_DASHBOARD_SALES_TOPIC", &self.sales_topic),
            ("SLUICE_DASHBOARD_INVENTORY_TOPIC", &self.inventory_topic),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(name, "must not be empty"));
            }
        }
        if self.admin_user.is_some() != self.admin_password.is_some() {
            return Err(invalid(
                "SLUICE_DASHBOARD_ADMIN_PASSWORD",
                "set both SLUICE_DASHBOARD_ADMIN_USER and SLUICE_DASHBOARD_ADMIN_PASSWORD, or neither",
            ));
        }
        Ok(())
    }

    /// `topic_prefix` + the sales topic.
    pub fn sales_topic(&self) -> String {
        format!("{}{}", self.topic_prefix, self.sales_topic)
    }

    /// `topic_prefix` + the inventory topic.
    pub fn inventory_topic(&self) -> String {
        format!("{}{}", self.topic_prefix, self.inventory_topic)
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
    fn a_bad_same_site_names_the_variable() {
        let config = Config {
            cookie_same_site: "None".into(),
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("SLUICE_DASHBOARD_COOKIE_SAME_SITE"), "{err}");
    }

    #[test]
    fn an_admin_without_password_is_refused() {
        let config = Config {
            admin_user: Some("root".into()),
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("ADMIN_PASSWORD"), "{err}");
    }

    #[test]
    fn a_socket_cap_of_zero_names_the_variable() {
        let config = Config {
            ws_per_session: 0,
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("SLUICE_DASHBOARD_WS_PER_SESSION"), "{err}");
    }

    #[test]
    fn a_wrong_mongo_scheme_names_the_variable() {
        let config = Config {
            mongodb_url: Secret::new("http://x".into()),
            ..Config::default()
        };
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("MONGODB_URL"), "{err}");
    }
}
