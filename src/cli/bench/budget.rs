//! The shared rate budget under load: a backlog drained by several workers — each with its own
//! connections and its own handle on the budget, sharing only the database, as separate
//! processes do — against a sandbox that enforces Dodo's tier-0 limits.

use std::time::Duration;

use anyhow::bail;

use super::BenchArgs;
use super::drain::queue_backlog;
use crate::configuration::{RateLimitTier, Settings};
use crate::dodo::RateLimits;
use crate::harness::start_sandbox;
use crate::startup::{Application, Role};
use crate::store::stock;

pub async fn run(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let limits = RateLimits::TIER0;
    settings.dodo.rate_limit = RateLimitTier::Tier0;
    settings.worker.concurrency = 16;
    settings.worker.poll_interval_ms = 100;
    settings.reconciler.interval_secs = 0;
    settings.database.migrate_on_start = false;
    let sandbox = start_sandbox(&mut settings)?;
    sandbox.sandbox.enforce_rate_limits(Some(limits));
    let db = crate::db::connect(&settings).await?;
    queue_backlog(
        &db,
        &settings.keys.vault()?,
        &sandbox.sandbox,
        args.budget_jobs,
    )
    .await?;

    let mut workers = Vec::new();
    for _ in 0..args.budget_workers.max(1) {
        let app = Application::build(&settings, Role::Worker).await?;
        workers.push((app.shutdown_token(), tokio::spawn(app.run_until_stopped())));
    }
    while stock::count_unsettled_jobs(&db).await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (token, running) in workers {
        token.cancel();
        running.await??;
    }
    let calls = sandbox.sandbox.admitted_calls();
    let over = sandbox.sandbox.calls_over_limit();
    let span = match (calls.first(), calls.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    let fastest = limits.fastest(calls.len());
    println!(
        "\nrate budget: {} jobs, {} workers sharing tier0 ({limits}), sandbox enforcing it",
        args.budget_jobs, args.budget_workers
    );
    println!(
        "  time taken          {:.1} s, first call to last ({} calls)",
        span.as_secs_f64(),
        calls.len()
    );
    println!(
        "  the limits allow    {:.1} s at best ({:.1}% of the time taken)",
        fastest.as_secs_f64(),
        fastest.as_secs_f64() / span.as_secs_f64().max(f64::EPSILON) * 100.0
    );
    println!("  answered 429        {over}");
    db.close().await;
    sandbox.stop().await;
    if over > 0 {
        bail!("{over} calls went over Dodo's limits");
    }
    Ok(())
}
