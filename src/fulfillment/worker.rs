//! The worker pool: a dispatcher claims due jobs in batches as capacity frees up, one task per
//! job calls Dodo and decides the outcome, and a completer records outcomes in batches.
//! Shutdown stops claiming, lets in-flight calls finish (bounded) and records their outcomes.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::run::{WorkerContext, guarded, run_job};
use crate::backoff::RetryPolicy;
use crate::configuration::WorkerSettings;
use crate::signal::JobSignal;
use crate::store::{self, ClaimedJob, Completion, Recipients};

/// Most jobs claimed in one transaction.
const MAX_CLAIM_BATCH: usize = 128;
/// Most outcomes recorded in one transaction.
const MAX_COMPLETE_BATCH: usize = 512;
/// How soon to retry recording outcomes while the database is unavailable.
const RECORD_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(50),
    max: Duration::from_secs(5),
};

/// Alerts for pools of `entitlements` that reservations just took below their threshold.
async fn check_stock(ctx: &WorkerContext, entitlements: &[String]) -> Result<(), sqlx::Error> {
    if !entitlements.is_empty() {
        ctx.alerter
            .check_low_stock(&ctx.db, entitlements, ctx.to.shop)
            .await?;
    }
    Ok(())
}

/// The distinct entitlements of claimed jobs.
fn claimed_entitlements(jobs: &[ClaimedJob]) -> Vec<String> {
    let mut entitlements: Vec<String> = jobs.iter().map(|j| j.entitlement_id.to_string()).collect();
    entitlements.sort();
    entitlements.dedup();
    entitlements
}

pub struct Worker {
    ctx: WorkerContext,
    concurrency: usize,
    poll_interval: Duration,
    shutdown_grace: Duration,
    signal: JobSignal,
}

impl Worker {
    pub fn new(ctx: WorkerContext, settings: &WorkerSettings, signal: JobSignal) -> Worker {
        Worker {
            ctx,
            concurrency: settings.concurrency as usize,
            poll_interval: settings.poll_interval(),
            shutdown_grace: settings.shutdown_grace(),
            signal,
        }
    }

    /// Claims up to `wanted` due jobs (none when the database fails: the loop tries again
    /// after the poll interval), and checks the stock of their pools in the background.
    async fn claim(&self, wanted: usize) -> Vec<ClaimedJob> {
        let ctx = &self.ctx;
        let jobs = ctx.claim(wanted).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "claiming jobs failed; retrying after the poll interval");
            Vec::new()
        });
        let entitlements = claimed_entitlements(&jobs);
        if !entitlements.is_empty() {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = check_stock(&ctx, &entitlements).await {
                    tracing::warn!(error = %e, "low-stock check failed");
                }
            });
        }
        jobs
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight work and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let tracker = TaskTracker::new();
        let (completions, completer) = spawn_completer(self.ctx.db.clone(), self.ctx.to.clone());
        tracing::info!(concurrency = self.concurrency, "worker pool started");
        let asking = tokio::spawn(ask_loop(
            self.ctx.clone(),
            self.concurrency,
            self.poll_interval,
            self.shutdown_grace,
            shutdown.clone(),
        ));
        loop {
            let Some(mut batch) = free_slots(&permits, MAX_CLAIM_BATCH, &shutdown).await else {
                break;
            };
            let wanted = batch.len();
            let jobs = self.claim(wanted).await;
            let claimed = jobs.len();
            for job in jobs {
                record_pickup(&job);
                let permit = batch.pop().expect("one permit per claimed job");
                spawn_run(&tracker, &self.ctx, job, permit, &completions);
            }
            drop(batch);
            if claimed < wanted {
                tokio::select! {
                    _ = self.signal.woken() => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tracing::info!(
            in_flight = tracker.len(),
            "worker pool stopping; finishing in-flight jobs"
        );
        let _ = asking.await;
        tracker.close();
        if tokio::time::timeout(self.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight jobs did not finish within worker.shutdown_grace_secs; their leases will expire and another worker will resume them"
            );
        }
        drop(completions);
        // A job still stuck past the grace period keeps a sender alive; its lease expires and
        // another worker resumes it, so the completer is not waited for forever.
        if tokio::time::timeout(self.shutdown_grace, completer)
            .await
            .is_err()
        {
            tracing::warn!("outcomes still queued at shutdown are left to the next worker");
        }
        tracing::info!("worker pool stopped");
    }
}

/// Runs one claimed job on its own task, holding `permit` for its call, and hands its outcome
/// to the completer (the task ends once the outcome is recorded).
fn spawn_run(
    tracker: &TaskTracker,
    ctx: &WorkerContext,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    completions: &mpsc::UnboundedSender<CompletionMsg>,
) {
    let ctx = ctx.clone();
    let completions = completions.clone();
    tracker.spawn(async move {
        let completion = guarded(&ctx, &job, run_job(&ctx, job.clone())).await;
        // The call is over: free the slot now. The job keeps its lease until its outcome is
        // recorded, and shutdown waits for that record.
        drop(permit);
        if let Some(completion) = completion {
            let (ack, acked) = oneshot::channel();
            if completions.send((completion, ack)).is_ok() {
                let _ = acked.await;
            }
        }
    });
}

fn record_pickup(job: &ClaimedJob) {
    if job.attempts == 1 {
        let waited = (Utc::now() - job.created_at).to_std().unwrap_or_default();
        metrics::histogram!("keyrelay_pickup_latency_seconds").record(waited.as_secs_f64());
    }
}

/// Waits for one free slot, then takes every other free one, up to `most`; `None` once
/// `shutdown` is cancelled. What a dispatcher claims that many jobs for.
async fn free_slots(
    permits: &Arc<Semaphore>,
    most: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
        _ = shutdown.cancelled() => return None,
    };
    let mut slots = vec![first];
    while slots.len() < most {
        match permits.clone().try_acquire_owned() {
            Ok(p) => slots.push(p),
            Err(_) => break,
        }
    }
    Some(slots)
}

type CompletionMsg = (Completion, oneshot::Sender<()>);

/// Records outcomes in batches: waits for one, takes whatever else is queued, writes them in
/// one statement, retrying while the database is unavailable. Acknowledges each when written.
fn spawn_completer(
    db: Db,
    to: Recipients,
) -> (
    mpsc::UnboundedSender<CompletionMsg>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<CompletionMsg>();
    let handle = tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(MAX_COMPLETE_BATCH);
        while rx.recv_many(&mut buffer, MAX_COMPLETE_BATCH).await > 0 {
            let (batch, acks): (Vec<Completion>, Vec<oneshot::Sender<()>>) =
                buffer.drain(..).unzip();
            let mut failures = 0;
            loop {
                match store::complete_batch(&db, &batch, &to).await {
                    Ok(applied) => {
                        if applied.len() < batch.len() {
                            for c in batch.iter().filter(|c| !applied.contains(&c.grant_id)) {
                                tracing::warn!(grant_id = %c.grant_id, "lease lost before the outcome was recorded; the new owner decides");
                            }
                        }
                        for c in &batch {
                            metrics::counter!("keyrelay_jobs_finished_total", "state" => c.state.as_str())
                                .increment(1);
                        }
                        break;
                    }
                    Err(sqlx::Error::PoolClosed) => {
                        // Shutting down: the leases expire and another worker resumes these
                        // jobs with the same keys, so nothing is lost by not waiting.
                        tracing::warn!(
                            jobs = batch.len(),
                            "database pool closed; outcomes left to the next worker"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, jobs = batch.len(), "recording outcomes failed; retrying");
                        failures += 1;
                        let wait = RECORD_RETRY.delay(failures, None, &mut rand::rng());
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
    });
    (tx, handle)
}

/// Asks endpoints for the keys of `http` pools' jobs until shutdown, up to `concurrency` calls
/// at once, each job on its own task: a free slot is filled at once, so no grant waits for
/// another's call. Rests for the poll interval when there is nothing to ask. It does not wait
/// on the job signal: a wake-up it took would be one the claim loop missed.
async fn ask_loop(
    ctx: WorkerContext,
    concurrency: usize,
    poll_interval: Duration,
    shutdown_grace: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let tracker = TaskTracker::new();
    loop {
        let Some(mut slots) = free_slots(&permits, usize::MAX, &shutdown).await else {
            break;
        };
        let wanted = slots.len();
        let jobs = match store::asking::claim_keyless(&ctx.db, wanted, ctx.lease).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming jobs of http pools failed; retrying after the poll interval");
                Vec::new()
            }
        };
        let claimed = jobs.len();
        for job in jobs {
            let slot = slots.pop().expect("one slot per claimed job");
            let ctx = ctx.clone();
            tracker.spawn(async move {
                let grant_id = job.grant_id.clone();
                if let Err(e) = super::ask::fetch_key(&ctx, job).await {
                    tracing::warn!(%grant_id, error = %e, "recording a key source's answer failed; the lease expires and the job is asked again with the same idempotency key");
                }
                drop(slot);
            });
        }
        drop(slots);
        if claimed < wanted {
            tokio::select! {
                _ = tokio::time::sleep(poll_interval) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "calls to key sources did not finish within worker.shutdown_grace_secs; their leases will expire and another worker asks again with the same idempotency key"
        );
    }
}

/// Claims one batch, runs every job in it concurrently and records the outcomes; returns the
/// outcomes recorded. Lets tests and tools drive the queue step by step without sleeping.
pub async fn run_batch(ctx: &WorkerContext, limit: usize) -> anyhow::Result<Vec<Completion>> {
    super::ask::fetch_keys(ctx, limit).await?;
    let jobs = ctx.claim(limit).await?;
    check_stock(ctx, &claimed_entitlements(&jobs)).await?;
    let runs = jobs
        .iter()
        .map(|job| guarded(ctx, job, run_job(ctx, job.clone())));
    let completions: Vec<Completion> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    if !completions.is_empty() {
        store::complete_batch(&ctx.db, &completions, &ctx.to).await?;
    }
    Ok(completions)
}
