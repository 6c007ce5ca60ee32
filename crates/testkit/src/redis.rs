//! A unique Redis key prefix per test; every key under it is deleted afterwards.

use anyhow::Context;
use redis::{AsyncCommands, Client, aio::ConnectionManager};

use crate::{cleanup, env_or, unique_name};

/// Keys of one test live under [`prefix`](Self::prefix).
pub struct TestRedis {
    url: String,
    prefix: String,
    conn: ConnectionManager,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl TestRedis {
    /// Connects and picks a fresh prefix.
    pub async fn create() -> anyhow::Result<Self> {
        let url = env_or("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let client = Client::open(url.as_str()).with_context(|| format!("Redis URL {url}"))?;
        let conn = ConnectionManager::new(client)
            .await
            .with_context(|| format!("connecting to Redis at {url} (run scripts/deps.sh)"))?;
        Ok(Self {
            url,
            prefix: format!("{}:", unique_name("test")),
            conn,
        })
    }

    /// The prefix, ending in `:`, to hand to the code under test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` under this test's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's socket address, e.g. to put a [`FaultProxy`](crate::FaultProxy) in front.
    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        crate::socket_addr(&self.url)
    }

    /// A multiplexed connection that reconnects by itself.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Keys that currently exist under the prefix.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        scan_prefix(&mut self.conn(), &self.prefix).await
    }
}

async fn scan_prefix(conn: &mut ConnectionManager, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut iter = conn.scan_match::<_, String>(format!("{prefix}*")).await?;
    while let Some(key) = futures::StreamExt::next(&mut iter).await {
        keys.push(key?);
    }
    Ok(keys)
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        cleanup::run_blocking(&format!("delete Redis keys {prefix}*"), async move {
            let mut conn = ConnectionManager::new(Client::open(url.as_str())?).await?;
            let keys = scan_prefix(&mut conn, &prefix).await?;
            for chunk in keys.chunks(500) {
                conn.del::<_, ()>(chunk).await?;
            }
            Ok(())
        });
    }
}
