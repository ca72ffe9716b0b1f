//! The worker pool: a dispatcher claims due jobs in batches as capacity frees up, one task per
//! job calls Dodo and decides the outcome, and a completer records outcomes in batches.
//! Shutdown stops claiming, lets in-flight calls finish (bounded) and records their outcomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{ConflictResolution, Verdict, classify, resolve_conflict};
use super::retry::RetryPolicy;
use super::signal::JobSignal;
use super::storage::{self, AttemptRecord, ClaimedJob, Completion, KeyAction, NextKey};
use crate::alerts::Alerter;
use crate::configuration::WorkerSettings;
use crate::dodo::{DodoClient, FulfillRequest};
use crate::domain::JobState;

/// Most jobs claimed in one transaction.
const MAX_CLAIM_BATCH: usize = 128;
/// Most outcomes recorded in one statement.
const MAX_COMPLETE_BATCH: usize = 512;

/// Everything a job needs to run.
#[derive(Clone)]
pub struct WorkerContext {
    pub pool: PgPool,
    pub dodo: DodoClient,
    pub alerter: Alerter,
    pub retry: RetryPolicy,
    pub max_attempts: u32,
    pub lease: Duration,
}

impl WorkerContext {
    pub fn new(pool: PgPool, dodo: DodoClient, settings: &WorkerSettings) -> WorkerContext {
        WorkerContext {
            pool,
            dodo,
            alerter: Alerter::new(None),
            retry: RetryPolicy {
                base: Duration::from_millis(settings.backoff_base_ms),
                max: Duration::from_millis(settings.backoff_max_ms),
            },
            max_attempts: settings.max_attempts,
            lease: settings.lease(),
        }
    }

    /// Sends low-stock alerts to `url` as well as to the log and metrics.
    pub fn with_alert_webhook(mut self, url: Option<String>) -> WorkerContext {
        self.alerter = Alerter::new(url);
        self
    }

    /// Alerts for pools of `entitlements` that reservations just took below their threshold.
    async fn check_stock(&self, entitlements: &[String]) -> Result<(), sqlx::Error> {
        if !entitlements.is_empty() {
            self.alerter
                .check_low_stock(&self.pool, entitlements)
                .await?;
        }
        Ok(())
    }
}

/// The distinct entitlements of claimed jobs.
fn claimed_entitlements(jobs: &[ClaimedJob]) -> Vec<String> {
    let mut entitlements: Vec<String> = jobs.iter().map(|j| j.entitlement_id.clone()).collect();
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

    /// Runs until `shutdown` is cancelled, then drains in-flight work and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let tracker = TaskTracker::new();
        let (completions, completer) = spawn_completer(self.ctx.pool.clone());
        tracing::info!(concurrency = self.concurrency, "worker pool started");
        loop {
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_CLAIM_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let wanted = batch.len();
            let jobs = match storage::claim_batch(&self.ctx.pool, wanted, self.ctx.lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming jobs failed; retrying after the poll interval");
                    Vec::new()
                }
            };
            let claimed = jobs.len();
            let entitlements = claimed_entitlements(&jobs);
            if !entitlements.is_empty() {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = ctx.check_stock(&entitlements).await {
                        tracing::warn!(error = %e, "low-stock check failed");
                    }
                });
            }
            for job in jobs {
                record_pickup(&job);
                let permit = batch.pop().expect("one permit per claimed job");
                let ctx = self.ctx.clone();
                let completions = completions.clone();
                tracker.spawn(async move {
                    let completion = run_job(&ctx, job).await;
                    // The call is over: free the slot now. The job keeps its lease until its
                    // outcome is recorded, and shutdown waits for that record.
                    drop(permit);
                    if let Some(completion) = completion {
                        let (ack, acked) = oneshot::channel();
                        if completions.send((completion, ack)).is_ok() {
                            let _ = acked.await;
                        }
                    }
                });
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
        let _ = completer.await;
        tracing::info!("worker pool stopped");
    }
}

fn record_pickup(job: &ClaimedJob) {
    if job.attempts == 1 {
        let waited = (Utc::now() - job.created_at).to_std().unwrap_or_default();
        metrics::histogram!("keyrelay_pickup_latency_seconds").record(waited.as_secs_f64());
    }
}

type CompletionMsg = (Completion, oneshot::Sender<()>);

/// Records outcomes in batches: waits for one, takes whatever else is queued, writes them in
/// one statement, retrying while the database is unavailable. Acknowledges each when written.
fn spawn_completer(
    pool: PgPool,
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
            let mut delay = Duration::from_millis(50);
            loop {
                match storage::complete_batch(&pool, &batch).await {
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
                    Err(e) => {
                        tracing::warn!(error = %e, jobs = batch.len(), "recording outcomes failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
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

/// Runs one claimed job to an outcome. `None` when the job needs no completion record (it was
/// parked waiting for keys, or its lease was lost).
pub async fn run_job(ctx: &WorkerContext, mut job: ClaimedJob) -> Option<Completion> {
    loop {
        let request = FulfillRequest {
            key: job.key.value.clone(),
            activations_limit: job.key.activations_limit,
            expires_at: job.key.expires_in_days.map(|days| {
                (Utc::now() + chrono::Duration::days(days.into()))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }),
        };
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = ctx.dodo.fulfill(&job.grant_id, &request).await;
        let duration = clock.elapsed();
        let http_status = result.as_ref().ok().map(|a| i32::from(a.status));
        metrics::histogram!("keyrelay_fulfill_duration_seconds").record(duration.as_secs_f64());
        metrics::counter!("keyrelay_fulfill_calls_total", "status" => status_class(http_status))
            .increment(1);
        let attempt = |outcome: &'static str, error: Option<String>| AttemptRecord {
            key_id: job.key.key_id,
            started_at,
            duration,
            http_status,
            outcome,
            error,
        };
        let verdict = classify(&result);
        let finish = |state, key_action, outcome, error: Option<String>| {
            finish(
                &job,
                state,
                key_action,
                http_status,
                attempt(outcome, error),
            )
        };
        match verdict {
            Verdict::Delivered => {
                tracing::info!(grant_id = %job.grant_id, "delivered");
                return Some(finish(
                    JobState::Delivered,
                    KeyAction::Deliver,
                    "delivered",
                    None,
                ));
            }
            Verdict::Permanent(error) => {
                tracing::warn!(grant_id = %job.grant_id, %error, "permanent failure; job failed");
                return Some(finish(
                    JobState::Failed,
                    KeyAction::Release,
                    "permanent_error",
                    Some(error),
                ));
            }
            Verdict::Retry {
                error,
                retry_after,
                config_problem,
            } => {
                if config_problem {
                    tracing::error!(grant_id = %job.grant_id, %error, "Dodo refused our API key");
                } else {
                    tracing::warn!(grant_id = %job.grant_id, %error, attempt = job.attempts, "will retry");
                }
                return Some(retry_later(
                    ctx,
                    &job,
                    http_status,
                    attempt("retry", Some(error)),
                    retry_after,
                ));
            }
            Verdict::Conflict => {}
        }
        let lookup = ctx
            .dodo
            .find_grant(&job.entitlement_id, &job.customer_id, &job.grant_id)
            .await;
        let resolution = match lookup {
            Ok(grant) => resolve_conflict(grant.as_ref(), &job.key.value),
            Err(e) => {
                let error = format!("409 from Dodo and the grant look-up failed: {e}");
                tracing::warn!(grant_id = %job.grant_id, %error, "will retry with the same key");
                return Some(retry_later(
                    ctx,
                    &job,
                    http_status,
                    attempt("conflict_unresolved", Some(error)),
                    None,
                ));
            }
        };
        tracing::info!(grant_id = %job.grant_id, ?resolution, "409 resolved by look-up");
        return Some(match resolution {
            ConflictResolution::DeliveredWithOurKey => finish(
                JobState::Delivered,
                KeyAction::Deliver,
                "conflict_delivered",
                None,
            ),
            ConflictResolution::DeliveredElsewhere => finish(
                JobState::Delivered,
                KeyAction::Release,
                "conflict_delivered_elsewhere",
                Some(
                    "409: the grant was fulfilled elsewhere with another key; our key was released"
                        .into(),
                ),
            ),
            ConflictResolution::Revoked { with_our_key: true } => finish(
                JobState::Cancelled,
                KeyAction::Revoke,
                "conflict_revoked",
                Some("409: the grant was delivered with our key, then revoked".into()),
            ),
            ConflictResolution::Revoked {
                with_our_key: false,
            } => finish(
                JobState::Cancelled,
                KeyAction::Release,
                "conflict_revoked",
                Some("409: the grant was revoked before fulfillment; our key was released".into()),
            ),
            ConflictResolution::FailedAtDodo { with_our_key } => finish(
                JobState::Failed,
                if with_our_key {
                    KeyAction::Keep
                } else {
                    KeyAction::Release
                },
                "conflict_failed",
                Some("409: Dodo reports the grant as Failed".into()),
            ),
            ConflictResolution::NotFound => retry_later(
                ctx,
                &job,
                http_status,
                attempt(
                    "conflict_unresolved",
                    Some("409 from Dodo but the grant is not in its listing yet".into()),
                ),
                None,
            ),
            ConflictResolution::KeyAlreadyExists => {
                let record = attempt(
                    "key_rejected",
                    Some("409: Dodo already has this key value; it is rejected and the next key is tried".into()),
                );
                tracing::warn!(grant_id = %job.grant_id, key_id = job.key.key_id, "key value already exists at Dodo; rejected");
                match storage::reject_key_and_reserve_next(&ctx.pool, &job, &record).await {
                    Ok(NextKey::Reserved(next)) => {
                        job.key = next;
                        continue;
                    }
                    Ok(NextKey::Parked | NextKey::LeaseLost) => return None,
                    Err(e) => {
                        let error = format!("rejecting a duplicate key failed: {e}");
                        retry_later(
                            ctx,
                            &job,
                            http_status,
                            attempt("conflict_unresolved", Some(error)),
                            None,
                        )
                    }
                }
            }
        });
    }
}

fn retry_later(
    ctx: &WorkerContext,
    job: &ClaimedJob,
    http_status: Option<i32>,
    attempt: AttemptRecord,
    retry_after: Option<Duration>,
) -> Completion {
    if job.attempts as u32 >= ctx.max_attempts {
        let mut attempt = attempt;
        let error = format!(
            "gave up after {} attempts; last error: {}",
            job.attempts,
            attempt.error.as_deref().unwrap_or("unknown")
        );
        tracing::error!(grant_id = %job.grant_id, %error, "job failed; the key stays reserved to it until a human retries or cancels");
        attempt.outcome = "gave_up";
        let mut c = finish(job, JobState::Failed, KeyAction::Keep, http_status, attempt);
        c.error = Some(error);
        return c;
    }
    let delay = ctx
        .retry
        .delay(job.attempts as u32, retry_after, &mut rand::rng());
    let mut c = finish(
        job,
        JobState::Retrying,
        KeyAction::Keep,
        http_status,
        attempt,
    );
    c.run_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    c
}

fn finish(
    job: &ClaimedJob,
    state: JobState,
    key_action: KeyAction,
    http_status: Option<i32>,
    attempt: AttemptRecord,
) -> Completion {
    Completion {
        grant_id: job.grant_id.clone(),
        lease_token: job.lease_token,
        key_id: job.key.key_id,
        state,
        run_at: Utc::now(),
        key_action,
        error: attempt.error.clone(),
        http_status,
        attempt,
    }
}

fn status_class(status: Option<i32>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(409) => "409",
        Some(429) => "429",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "no_answer",
    }
}

/// Claims one batch, runs every job in it concurrently and records the outcomes; returns the
/// outcomes recorded. Lets tests and tools drive the queue step by step without sleeping.
pub async fn run_batch(ctx: &WorkerContext, limit: usize) -> anyhow::Result<Vec<Completion>> {
    let jobs = storage::claim_batch(&ctx.pool, limit, ctx.lease).await?;
    ctx.check_stock(&claimed_entitlements(&jobs)).await?;
    let runs = jobs.into_iter().map(|job| run_job(ctx, job));
    let completions: Vec<Completion> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    if !completions.is_empty() {
        storage::complete_batch(&ctx.pool, &completions).await?;
    }
    Ok(completions)
}
