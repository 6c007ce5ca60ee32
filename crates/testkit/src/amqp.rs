//! Unique RabbitMQ exchange and queue names per test; deleted afterwards.

use std::sync::Mutex;

use anyhow::Context;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};

use crate::{cleanup, env_or, unique_name};

/// A connection plus a name generator whose names are removed from the broker on drop.
#[derive(Debug)]
pub struct TestAmqp {
    url: String,
    prefix: String,
    conn: Connection,
    names: Mutex<Vec<String>>,
}

impl TestAmqp {
    /// Connects to the broker.
    pub async fn create() -> anyhow::Result<Self> {
        let url = env_or(
            "SLUICE_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to RabbitMQ at {url} (run scripts/deps.sh)"))?;
        Ok(Self {
            url,
            prefix: unique_name("test"),
            conn,
            names: Mutex::new(Vec::new()),
        })
    }

    /// A name for an exchange or queue of this test; whatever is declared with it is deleted
    /// when the `TestAmqp` is dropped.
    pub fn name(&self, base: &str) -> String {
        let name = format!("{}.{base}", self.prefix);
        if let Ok(mut names) = self.names.lock() {
            names.push(name.clone());
        }
        name
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test's connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A new channel on the test's connection.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.conn.create_channel().await?)
    }
}

impl Drop for TestAmqp {
    fn drop(&mut self) {
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let url = self.url.clone();
        cleanup::run_blocking("delete AMQP queues and exchanges", async move {
            let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
            for name in names {
                // Each name may be a queue, an exchange or neither; a failed delete closes the
                // channel, so every attempt gets its own.
                let ch = conn.create_channel().await?;
                let _ = ch
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let ch = conn.create_channel().await?;
                let _ = ch
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "test done".into()).await;
            Ok(())
        });
    }
}
