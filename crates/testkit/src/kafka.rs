//! Unique Kafka topics and consumer group ids per test; topics are deleted afterwards.

use std::{sync::Mutex, time::Duration};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
};

use crate::{cleanup, env_or, unique_name};

/// Topics created through this helper exist for one test.
pub struct TestKafka {
    bootstrap: String,
    prefix: String,
    admin: AdminClient<DefaultClientContext>,
    topics: Mutex<Vec<String>>,
}

impl std::fmt::Debug for TestKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKafka")
            .field("bootstrap", &self.bootstrap)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl TestKafka {
    /// An admin client for the shared broker (`SLUICE_TEST_KAFKA`).
    pub async fn create() -> anyhow::Result<Self> {
        Self::on(&env_or("SLUICE_TEST_KAFKA", "127.0.0.1:9092")).await
    }

    /// An admin client for the broker at `bootstrap` (e.g. an [`crate::OwnKafka`]).
    pub async fn on(bootstrap: &str) -> anyhow::Result<Self> {
        let bootstrap = bootstrap.to_owned();
        let admin = admin_client(&bootstrap)?;
        Ok(Self {
            bootstrap,
            prefix: unique_name("test"),
            admin,
            topics: Mutex::new(Vec::new()),
        })
    }

    /// `bootstrap.servers` for clients of the test.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A client config with `bootstrap.servers` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Creates a topic named after `base` with `partitions` partitions and returns its name.
    pub async fn topic(&self, base: &str, partitions: i32) -> anyhow::Result<String> {
        let name = format!("{}.{base}", self.prefix);
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics([&topic], &opts)
            .await
            .with_context(|| {
                format!(
                    "creating topic {name} on {} (run scripts/deps.sh)",
                    self.bootstrap
                )
            })?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        if let Ok(mut topics) = self.topics.lock() {
            topics.push(name.clone());
        }
        Ok(name)
    }

    /// A consumer group id no other test uses (the broker's group state is per id).
    pub fn group_id(&self, base: &str) -> String {
        format!("{}.{base}", self.prefix)
    }
}

fn admin_client(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .with_context(|| format!("Kafka admin client for {bootstrap}"))
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        let topics = self.topics.lock().map(|t| t.clone()).unwrap_or_default();
        if topics.is_empty() {
            return;
        }
        let bootstrap = self.bootstrap.clone();
        cleanup::run_blocking("delete Kafka topics", async move {
            let admin = admin_client(&bootstrap)?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            admin.delete_topics(&names, &opts).await?;
            Ok(())
        });
    }
}
