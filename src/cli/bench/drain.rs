//! `keyrelay bench drain`: a worker pool draining queued jobs against the sandbox, with and
//! without latency, optionally over a large finished history.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{BenchArgs, ENTITLEMENT, entitlement, import_generated_keys};
use crate::configuration::{RateLimitTier, Settings};
use crate::harness::start_sandbox;
use crate::sandbox::FaultRates;
use crate::startup::{Application, Role};
use crate::store::{enqueue, prune, read, stock};

/// Sells `jobs` grants in the sandbox and queues a job for each, with a key for each in the pool.
pub(super) async fn queue_backlog(
    db: &crate::db::Db,
    vault: &crate::crypto::Vault,
    sandbox: &crate::sandbox::Sandbox,
    jobs: usize,
) -> anyhow::Result<()> {
    import_generated_keys(db, vault, "BENCH", jobs).await?;
    let grants: Vec<_> = (0..jobs)
        .map(|_| {
            let g = sandbox.create_grant(ENTITLEMENT, None);
            let facts = crate::intake::event::GrantFacts::from_grant(&g)?;
            anyhow::Ok((facts.id, facts.customer_id, facts.payment_id))
        })
        .collect::<Result<_, _>>()?;
    enqueue::enqueue_grants(db, &entitlement(), &grants, "bench", "benchmark").await?;
    prune::vacuum_analyze(db).await?;
    Ok(())
}

pub(super) async fn drain(
    settings: Settings,
    args: &BenchArgs,
    latency_ms: u64,
) -> anyhow::Result<()> {
    drain_rate(settings, args, latency_ms, true)
        .await
        .map(|_| ())
}

/// The drain run; jobs delivered per second. Prints what it saw when `report` is set.
pub(super) async fn drain_rate(
    mut settings: Settings,
    args: &BenchArgs,
    latency_ms: u64,
    report: bool,
) -> anyhow::Result<f64> {
    settings.worker.concurrency = args.concurrency;
    settings.dodo.rate_limit = RateLimitTier::Off;
    settings.worker.poll_interval_ms = 100;
    settings.reconciler.interval_secs = 0;
    settings.database.migrate_on_start = false;
    let sandbox = start_sandbox(&mut settings)?;
    sandbox.sandbox.set_fault_rates(FaultRates {
        latency_ms,
        ..Default::default()
    });
    let db = crate::db::connect(&settings).await?;
    if args.history > 0 {
        let t = Instant::now();
        enqueue::insert_history_for_benchmark(&db, &entitlement(), args.history).await?;
        println!(
            "\n(inserted {} finished jobs in {:.1} s)",
            args.history,
            t.elapsed().as_secs_f64()
        );
    }
    queue_backlog(&db, &settings.keys.vault()?, &sandbox.sandbox, args.jobs).await?;
    prune::quiesce(&db).await?;

    let app = Application::build(&settings, Role::Worker).await?;
    let token = app.shutdown_token();
    let since = chrono::Utc::now();
    let started = Instant::now();
    let running = tokio::spawn(app.run_until_stopped());
    loop {
        let left = stock::count_unsettled_jobs(&db).await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    running.await??;
    let (delivered, call_p50, call_p99) = read::bench_figures(&db, since).await?;
    let rate = args.jobs as f64 / elapsed.as_secs_f64();
    db.close().await;
    sandbox.stop().await;
    if delivered as usize != args.jobs {
        bail!("only {delivered} of {} jobs were delivered", args.jobs);
    }
    if !report {
        return Ok(rate);
    }
    println!(
        "\ndrain: {} jobs, concurrency {}, sandbox latency {latency_ms} ms{}",
        args.jobs,
        args.concurrency,
        if args.history > 0 {
            format!(", {} finished jobs in the table", args.history)
        } else {
            String::new()
        }
    );
    println!(
        "  jobs/s              {rate:.0}  ({delivered} delivered in {:.2} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  fulfill call        p50 {call_p50:.0} ms  p99 {call_p99:.0} ms (as recorded per attempt)"
    );
    if latency_ms > 0 {
        let ideal = args.concurrency as f64 * 1000.0 / latency_ms as f64;
        println!(
            "  of ideal            {:.1}% of {ideal:.0} jobs/s",
            rate / ideal * 100.0
        );
    }
    Ok(rate)
}
