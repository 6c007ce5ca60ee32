//! The command line: `sluice-dashboard [serve]` and `sluice-dashboard user add NAME --role ROLE`.

use std::io::BufRead;

use clap::{Parser, Subcommand};

use crate::{
    Config, Error, Result,
    users::{Role, UserStore},
};

/// The dashboard's command line.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-dashboard",
    about = "Role-based live dashboard of the sluice pipeline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the page (the default).
    Serve,
    /// Manage users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

/// A user command.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user; the password comes from SLUICE_DASHBOARD_PASSWORD or the first line of stdin.
    Add {
        /// Login name.
        name: String,
        /// viewer, accountant or admin.
        #[arg(long)]
        role: String,
    },
}

/// Adds a user to the database of `config`.
pub async fn add_user(config: &Config, name: &str, role: &str) -> Result<()> {
    let role: Role = role.parse()?;
    let password = match std::env::var("SLUICE_DASHBOARD_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| Error::invalid("password", format!("reading stdin: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let pool = crate::connect_postgres(config).await?;
    UserStore::new(pool)?.add(name, role, &password).await?;
    tracing::info!(user = name, %role, "user added");
    Ok(())
}
