//! `sluice-producer run --source … --sink …`: see the library docs.

use std::process::ExitCode;

use clap::Parser;
use sluice_core::{shutdown, telemetry};
use sluice_producer::config::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // Arguments first: `--help` and argument errors are printed before any log line.
    let Command::Run(args) = Cli::parse().command;
    telemetry::init_logs("sluice-producer");
    let shutdown = shutdown::on_signal();
    match sluice_producer::run(*args, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "producer failed");
            ExitCode::FAILURE
        }
    }
}
