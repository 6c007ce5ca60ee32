//! A Kafka-protocol broker a test owns: durable tansu (its data in a SQLite file of the test's
//! own directory) on a free port, which the test can kill and start again with its data.
//!
//! The shared broker of scripts/deps.sh keeps data in memory only, so a restart loses every
//! topic; this one is built once by scripts/deps.sh (`cargo install tansu --features libsql`)
//! into `~/.cache/sluice/tansu-durable`. `SLUICE_TANSU_DURABLE` names another binary.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer as _},
};
use tokio::process::{Child, Command};

use crate::{eventually, unique_name};

/// Where scripts/deps.sh puts the durable tansu.
fn default_binary() -> PathBuf {
    let cache = std::env::var_os("SLUICE_CACHE_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/sluice")
        },
        PathBuf::from,
    );
    cache.join("tansu-durable/bin/tansu")
}

/// A durable Kafka-protocol broker for one test; stopped and its data removed when dropped.
#[derive(Debug)]
pub struct OwnKafka {
    binary: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl OwnKafka {
    /// Starts the broker on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let binary =
            std::env::var_os("SLUICE_TANSU_DURABLE").map_or_else(default_binary, PathBuf::from);
        if !binary.is_file() {
            bail!(
                "no durable tansu at {} (scripts/deps.sh builds it once, about 11 minutes; \
                 or set SLUICE_TANSU_DURABLE)",
                binary.display()
            );
        }
        let dir = std::env::temp_dir().join(unique_name("sluice-tansu"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A port nobody holds now; the broker binds it a moment later.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut broker = Self {
            binary,
            dir,
            addr,
            child: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `bootstrap.servers` for clients of this broker.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// A client config with `bootstrap.servers` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Kills the broker (SIGKILL: no orderly shutdown) and waits for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing tansu")?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port with the same data.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.binary)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // Relative to the working directory: <dir>/tansu.db.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let bootstrap = self.bootstrap();
        let answered = eventually(
            "tansu answers a metadata request",
            Duration::from_secs(30),
            || {
                let bootstrap = bootstrap.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let client: BaseConsumer = ClientConfig::new()
                            .set("bootstrap.servers", &bootstrap)
                            .create()
                            .ok()?;
                        client
                            .client()
                            .fetch_metadata(None, Duration::from_secs(1))
                            .ok()
                            .map(|_| ())
                    })
                    .await
                    .ok()
                    .flatten()
                }
            },
        )
        .await;
        answered.with_context(|| format!("see {}", self.dir.join("tansu.log").display()))
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
