//! sluice-testkit: what integration tests need to run against real servers, isolated.
//!
//! Every helper gives a test its own resource on the shared local servers and removes it when
//! dropped, so tests run in parallel without seeing each other's data:
//!
//! | helper | isolation | server (override with env) |
//! |---|---|---|
//! | [`TestDatabase`] | a fresh Postgres database, migrated from `migrations/` | `SLUICE_TEST_POSTGRES` (`postgres://postgres@127.0.0.1:5432`) |
//! | [`TestRedis`] | a unique key prefix | `SLUICE_TEST_REDIS_URL` (`redis://127.0.0.1:6379`) |
//! | [`TestAmqp`] | unique exchange and queue names | `SLUICE_TEST_AMQP_URL` (`amqp://guest:guest@127.0.0.1:5672/%2f`) |
//! | [`TestKafka`] | unique topics and consumer group ids | `SLUICE_TEST_KAFKA` (`127.0.0.1:9092`) |
//! | [`TestMongo`] | a unique database | `SLUICE_TEST_MONGO_URL` (`mongodb://127.0.0.1:27017/?directConnection=true`) |
//! | [`OwnKafka`] | a durable broker of the test's own, which it can kill and start again | `SLUICE_TANSU_DURABLE` (`~/.cache/sluice/tansu-durable/bin/tansu`) |
//!
//! Around them: [`eventually`] polls a condition with a deadline (tests never sleep a fixed
//! time), [`ChildService`] runs a service binary on port 0 and reads its port from its log,
//! [`InProcess`] runs an app future with a cancellation token, and [`FaultProxy`] sits between a
//! client and a server so a test can cut, refuse or slow connections without touching the
//! shared server. `scripts/deps.sh` starts the servers.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let db = sluice_testkit::TestDatabase::create().await?;
//! let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
//!     .fetch_one(db.pool())
//!     .await?;
//! assert_eq!(n, 0);
//! # Ok(()) }
//! ```

mod amqp;
mod broker;
mod cleanup;
mod kafka;
mod mongo;
mod postgres;
mod proxy;
mod redis;
mod spawn;
mod wait;

pub use amqp::TestAmqp;
pub use broker::OwnKafka;
pub use kafka::TestKafka;
pub use mongo::TestMongo;
pub use postgres::TestDatabase;
pub use proxy::FaultProxy;
pub use redis::TestRedis;
pub use spawn::{ChildService, InProcess};
pub use wait::eventually;

/// A name no other test uses: `prefix` followed by 12 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// `host:port` of a URL such as `scheme://user:pw@host:port/path`.
fn host_port(url: &str) -> &str {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, hp)| hp)
}

/// The socket address a URL points at.
fn socket_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    let host_port = host_port(url);
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("no address for {host_port}"))
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}
