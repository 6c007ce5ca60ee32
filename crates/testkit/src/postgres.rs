//! A fresh Postgres database per test, with the project's migrations applied.

use std::{path::Path, str::FromStr};

use anyhow::Context;
use sqlx::{
    Connection, Executor, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{cleanup, env_or, unique_name};

/// A database that exists for one test and is dropped (with `FORCE`) afterwards.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    server: String,
    url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// Creates the database and applies every migration in `migrations/`.
    pub async fn create() -> anyhow::Result<Self> {
        let db = Self::create_empty().await?;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
        Migrator::new(dir.as_path())
            .await
            .with_context(|| format!("reading migrations from {}", dir.display()))?
            .run(&db.pool)
            .await
            .context("applying migrations")?;
        Ok(db)
    }

    /// Creates the database without migrations, for tests of start-up migration itself.
    pub async fn create_empty() -> anyhow::Result<Self> {
        let server = env_or("SLUICE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432");
        let name = unique_name("sluice_test");
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .with_context(|| format!("connecting to Postgres at {server} (run scripts/deps.sh)"))?;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = format!("{server}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(PgConnectOptions::from_str(&url)?)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            name,
            server,
            url,
            pool,
        })
    }

    /// A pool of connections to this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL of this database, e.g. for a service's `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's socket address, e.g. to put a [`FaultProxy`](crate::FaultProxy) in front.
    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        crate::socket_addr(&self.server)
    }

    /// This database's URL with the server address replaced by `addr` (a proxy's).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        self.url
            .replacen(crate::host_port(&self.server), &addr.to_string(), 1)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        cleanup::run_blocking(&format!("drop database {name}"), async move {
            let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
            admin
                .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                .await?;
            Ok(())
        });
    }
}
