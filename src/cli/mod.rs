//! The `keyrelay` command line: argument definitions and dispatch to one module per group.

mod bench;
mod demo;
mod events;
mod jobs;
mod keys;
mod outbox;
mod output;
mod pool;
pub mod sandbox;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::configuration::Settings;
use crate::startup::{Application, Role};

pub use demo::percentile;

#[derive(Debug, Parser)]
#[command(
    name = "keyrelay",
    version,
    about = "Fulfil Dodo Payments license-key grants from your own key pools, exactly once."
)]
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
        /// What this process runs; several processes may share one database.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Key pools.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Fulfillment jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Stored webhooks: list, show, replay.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// What keyrelay owes key vendors and the shop: list, show, retry.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Queue pending grants at Dodo whose webhook never arrived.
    Reconcile,
    /// Key material: signing keys for `sign` pools, and checking a signed key.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The whole flow on this machine against the built-in sandbox (needs only Postgres).
    Demo {
        /// How many grants to sell.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        grants: u32,
        /// Keep the throwaway database to inspect it afterwards; the demo prints the
        /// DATABASE_URL and KEYRELAY_ENCRYPTION_KEY to use with `keyrelay jobs` and friends.
        #[arg(long)]
        keep_database: bool,
    },
    /// Run the built-in Dodo stand-in on its own.
    Sandbox {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        bind: String,
        /// The API key the sandbox accepts (keyrelay's DODO_PAYMENTS_API_KEY).
        #[arg(long, default_value = sandbox::DEFAULT_API_KEY)]
        api_key: String,
        /// The whsec_ secret the sandbox signs webhooks with (keyrelay's
        /// DODO_PAYMENTS_WEBHOOK_KEY).
        #[arg(long, default_value = sandbox::DEFAULT_WEBHOOK_SECRET)]
        webhook_secret: String,
        /// Answer calls over Dodo's rate limits with 429, as Dodo does: tier0, tier1, tier2, or
        /// BURST/PER_MIN (e.g. 20/80). Unlimited when absent.
        #[arg(long, value_parser = sandbox::parse_rate_limits)]
        rate_limit: Option<crate::dodo::RateLimits>,
    },
    /// Measure intake, drain, pickup latency and the rate budget on this machine, each on a
    /// throwaway database.
    ///
    /// Compare intake with what Postgres itself commits: `scripts/pg_ceiling.sh 64` measures
    /// two-insert transactions per second on the same server.
    Bench(bench::BenchArgs),
    /// Exit 0 when keyrelay answers ready at URL (the container's health check).
    Healthcheck {
        /// The readiness URL to ask.
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
}

impl Cli {
    /// Parses the command line; an argument with control characters (which could rewrite the
    /// operator's terminal when echoed) is a usage error, reported escaped.
    pub fn parse_args() -> Cli {
        for (i, arg) in std::env::args_os().enumerate().skip(1) {
            let text = arg.to_string_lossy();
            if text.chars().any(char::is_control) {
                let shown: String = text.chars().take(64).collect();
                eprintln!(
                    "error: argument {i} ({}) contains control characters; remove them",
                    shown.escape_debug()
                );
                std::process::exit(2);
            }
        }
        Cli::parse()
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    let _ = dotenvy::dotenv();
    match dispatch(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn dispatch(cli: Cli) -> anyhow::Result<bool> {
    // Key tools need no settings: they work on a machine with no configuration at all.
    let command = cli.command;
    if let Command::Keys(keys_command) = &command
        && let Some(done) = keys::run_offline(keys_command)
    {
        return done;
    }
    // The health check runs every few seconds in a container: it needs no settings either.
    if let Command::Healthcheck { url } = &command {
        return healthcheck(url).await;
    }
    let settings = Settings::load(cli.config.as_deref())?;
    let quiet = matches!(command, Command::Demo { .. } | Command::Bench(_));
    crate::telemetry::init(settings.log.format, if quiet { "error" } else { "info" });
    match command {
        Command::Serve { role } => {
            Application::check(&settings, role)?;
            if settings.database.migrate_on_start {
                crate::db::wait_until_reachable(&settings, wait_for_stop_signal()).await?;
            }
            let app = Application::build(&settings, role).await?;
            let token = app.shutdown_token();
            tokio::spawn(async move {
                wait_for_stop_signal().await;
                tracing::info!("shutdown requested; finishing in-flight work");
                token.cancel();
            });
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            let db = crate::db::migrate(&settings).await?;
            let vault = settings.keys.vault().ok();
            let sealed = crate::ops::sealing::seal_plaintext(&db, vault.as_ref()).await?;
            if sealed > 0 {
                println!("sealed {sealed} rows that held key values in plaintext");
            }
            println!(
                "database {} is up to date",
                settings.database_url_redacted()
            );
        }
        Command::Pool(command) => {
            pool::run(&crate::db::connect(&settings).await?, &settings, command).await?
        }
        Command::Jobs(command) => {
            jobs::run(&crate::db::connect(&settings).await?, &settings, command).await?
        }
        Command::Events(command) => {
            events::run(&crate::db::connect(&settings).await?, &settings, command).await?
        }
        Command::Outbox(command) => {
            outbox::run(&crate::db::connect(&settings).await?, command).await?
        }
        Command::Reconcile => events::reconcile(&settings).await?,
        Command::Demo {
            grants,
            keep_database,
        } => {
            let options = demo::DemoOptions {
                grants: grants as usize,
                keep_database,
                public_key: None,
            };
            return demo::run(settings, options).await;
        }
        Command::Sandbox {
            bind,
            api_key,
            webhook_secret,
            rate_limit,
        } => {
            sandbox::run(&bind, &api_key, &webhook_secret, rate_limit).await?;
        }
        Command::Bench(args) => bench::run(settings, args).await?,
        Command::Keys(keys::KeysCommand::Public) => return keys::public(&settings),
        Command::Keys(_) => return keys::rotate(&settings).await,
        Command::Healthcheck { url } => return healthcheck(&url).await,
    }
    Ok(true)
}

/// Asks `url` once, with a short timeout: the container runtime calls this every few seconds.
async fn healthcheck(url: &str) -> anyhow::Result<bool> {
    let client = crate::outbound::client()
        .timeout(std::time::Duration::from_secs(4))
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url} did not answer: {e}"))?;
    if response.status().is_success() {
        println!("ready: {url} answered {}", response.status());
        Ok(true)
    } else {
        eprintln!("not ready: {url} answered {}", response.status());
        Ok(false)
    }
}

pub(crate) async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and every argument, walked from the top.
    fn undescribed(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", command.get_name()).trim().to_string();
        if command.get_about().is_none() {
            missing.push(format!("`{path}` has no description"));
        }
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!(
                    "`{path}` argument `{}` has no description",
                    arg.get_id()
                ));
            }
        }
        for sub in command.get_subcommands() {
            undescribed(sub, &path, missing);
        }
    }

    #[test]
    fn every_command_and_argument_says_what_it_does() {
        let mut missing = Vec::new();
        undescribed(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn help_names_nothing_outside_the_repository() {
        let mut help = Vec::new();
        let mut command = Cli::command();
        for sub in command.get_subcommands_mut() {
            help.push(sub.render_long_help().to_string());
            for inner in sub.get_subcommands_mut() {
                help.push(inner.render_long_help().to_string());
            }
        }
        let all = help.join("\n");
        for outside in ["SPEC", "§", "../shared"] {
            assert!(!all.contains(outside), "help mentions {outside}");
        }
        let jobs_list = Cli::command()
            .find_subcommand_mut("jobs")
            .and_then(|c| c.find_subcommand_mut("list"))
            .map(|c| c.render_long_help().to_string())
            .unwrap();
        for state in crate::domain::JobState::ALL {
            assert!(
                jobs_list.contains(state.as_str()),
                "jobs list --help names {state}"
            );
        }
    }
}
