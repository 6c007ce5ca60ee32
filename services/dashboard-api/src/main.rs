//! `sluice-dashboard`: see the library docs. Configured from the environment.

use anyhow::Context;
use clap::Parser;
use sluice_core::{shutdown, telemetry};
use sluice_dashboard::{
    App, Config,
    cli::{Cli, Command, UserAction},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Arguments first: `--help` and argument errors print alone, before any log line.
    let cli = Cli::parse();
    telemetry::init_logs("sluice-dashboard");
    let config = Config::from_env().context("configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = shutdown::on_signal();
            let app = App::build(config).await.context("starting the dashboard")?;
            app.run(shutdown).await.context("running the dashboard")
        }
        Command::User {
            action: UserAction::Add { name, role },
        } => sluice_dashboard::cli::add_user(&config, &name, &role)
            .await
            .context("adding the user"),
    }
}
