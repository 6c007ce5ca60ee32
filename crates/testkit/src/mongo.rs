//! A unique MongoDB database per test; dropped afterwards.

use anyhow::Context;
use mongodb::{Client, Database};

use crate::{cleanup, env_or, unique_name};

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestMongo {
    url: String,
    client: Client,
    db: Database,
}

impl TestMongo {
    /// Connects and picks a database name; the database appears on first write.
    pub async fn create() -> anyhow::Result<Self> {
        let url = env_or(
            "SLUICE_TEST_MONGO_URL",
            "mongodb://127.0.0.1:27017/?directConnection=true",
        );
        let client = Client::with_uri_str(&url)
            .await
            .with_context(|| format!("MongoDB URL {url}"))?;
        let db = client.database(&unique_name("sluice_test"));
        Ok(Self { url, client, db })
    }

    /// The test's database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The client, e.g. to start a session for a transaction.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestMongo {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.db.name().to_owned());
        cleanup::run_blocking(&format!("drop Mongo database {name}"), async move {
            let client = Client::with_uri_str(&url).await?;
            client.database(&name).drop().await?;
            Ok(())
        });
    }
}
