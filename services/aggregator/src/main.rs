//! `sluice-aggregator`: see the library docs. Configured from the environment.

use anyhow::Context;
use clap::Parser;
use sluice_aggregator::{App, Config};
use sluice_core::{shutdown, telemetry};

/// Only `--help` and `--version`: every setting comes from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-aggregator",
    version,
    about = "Takes events in over HTTP (and RabbitMQ) and stores each exactly once in Postgres",
    after_help = "Settings come from the environment (DATABASE_URL, REDIS_URL, PORT, \
                  SLUICE_AGGREGATOR_<KEY>); docs/operations.md lists them."
)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Arguments first: `--help` and argument errors are printed before any log line.
    Cli::parse();
    telemetry::init_logs("sluice-aggregator");
    let config = Config::from_env().context("configuration")?;
    let shutdown = shutdown::on_signal();
    let app = App::build(config)
        .await
        .context("starting the aggregator")?;
    app.run(shutdown).await.context("running the aggregator")
}
