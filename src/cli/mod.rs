//! The `keyrelay` command line: argument definitions and dispatch to one module per group.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::configuration::Settings;
use crate::startup::Role;

#[derive(Debug, Parser)]
#[command(name = "keyrelay", version, about = "Fulfil Dodo Payments license-key grants from your own key pools, exactly once.")]
pub struct Cli {
    /// Settings file (default: ./keyrelay.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver, the worker pool, or both.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the database if missing and apply migrations.
    Migrate,
}

pub async fn run(cli: Cli) -> ExitCode {
    let _ = dotenvy::dotenv();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn error_chain(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(settings.log.format, "info");
    match cli.command {
        Command::Serve { role } => {
            let app = crate::startup::Application::build(&settings, role).await?;
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            crate::db::migrate(&settings).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
