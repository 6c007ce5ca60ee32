//! `sluice-analytics`: see the library docs. Configured from the environment.

use anyhow::Context;
use sluice_analytics::{App, Config};
use sluice_core::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logs("sluice-analytics");
    let config = Config::from_env().context("configuration")?;
    let shutdown = shutdown::on_signal();
    let app = App::build(config)
        .await
        .context("starting stream analytics")?;
    app.run(shutdown).await.context("running stream analytics")
}
