//! One claimed job, run to an outcome: send its key to Dodo, look the grant up after a 409, ask
//! `decide` what the answer means, and hand the decision to the store.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::db::Db;
use chrono::{DateTime, TimeDelta, Utc};

use super::decide::{self, Budget, Decision, Next, Severity};
use crate::backoff::RetryPolicy;
use crate::configuration::WorkerSettings;
use crate::crypto::Vault;
use crate::dodo::{CallError, DodoClient, FulfillRequest, Turn};
use crate::domain::{AttemptOutcome, JobState, KeyAction, LicenseKey, printable};
use crate::ops::alerts::Alerter;
use crate::sources::Sources;
use crate::store::{self, AttemptRecord, ClaimedJob, Completion, NextKey, Recipients, ReservedKey};

/// Everything a job needs to run.
#[derive(Clone)]
pub struct WorkerContext {
    pub db: Db,
    pub dodo: DodoClient,
    pub alerter: Alerter,
    pub retry: RetryPolicy,
    pub max_attempts: u32,
    pub lease: Duration,
    /// Where keys come from: the signing key of `sign` pools, the endpoints of `http` pools.
    pub sources: Sources,
    /// Seals new keys and opens bound ones.
    pub vault: Option<Arc<Vault>>,
    /// Who is owed notices of what the workers change.
    pub to: Recipients,
}

impl WorkerContext {
    pub fn new(db: Db, dodo: DodoClient, settings: &WorkerSettings) -> WorkerContext {
        WorkerContext {
            db,
            dodo,
            alerter: Alerter::new(None),
            retry: RetryPolicy {
                base: Duration::from_millis(settings.backoff_base_ms),
                max: Duration::from_millis(settings.backoff_max_ms),
            },
            max_attempts: settings.max_attempts,
            lease: settings.lease(),
            sources: Sources::default(),
            vault: None,
            to: Recipients::default(),
        }
    }

    /// Owes notices of what the workers change to `to`.
    pub fn with_recipients(mut self, to: Recipients) -> WorkerContext {
        self.to = to;
        self
    }

    /// Gets keys from `sources` (signing, endpoints).
    pub fn with_sources(mut self, sources: Sources) -> WorkerContext {
        self.sources = sources;
        self
    }

    /// Seals and opens keys with `vault`.
    pub fn with_vault(mut self, vault: Option<Arc<Vault>>) -> WorkerContext {
        self.vault = vault;
        self
    }

    /// The vault, or why keys cannot be sealed or opened.
    pub fn vault(&self) -> Result<&Vault, String> {
        self.vault
            .as_deref()
            .ok_or_else(crate::crypto::no_encryption_key)
    }

    /// Claims up to `limit` due jobs with their keys, from this context's sources.
    pub async fn claim(&self, limit: usize) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        store::claim_batch(
            &self.db,
            limit,
            self.lease,
            &self.sources,
            self.vault.as_deref(),
            &self.to,
        )
        .await
    }

    /// Sends low-stock alerts to `url` as well as to the log and metrics.
    pub fn with_alert_webhook(mut self, url: Option<String>) -> WorkerContext {
        self.alerter = Alerter::new(url);
        self
    }

    fn budget(&self, job: &ClaimedJob) -> Budget {
        Budget {
            attempt: job.attempts.max(0) as u32,
            max_attempts: self.max_attempts,
        }
    }
}

/// Runs one claimed job to an outcome. `None` when the job needs no completion record (it was
/// parked waiting for keys, or its lease was lost).
pub async fn run_job(ctx: &WorkerContext, mut job: ClaimedJob) -> Option<Completion> {
    loop {
        let key = match ctx.vault().and_then(|vault| job.key.open(vault)) {
            Ok(key) => key,
            Err(why) => {
                let error = format!(
                    "the key bound to grant {} cannot be read, so nothing was sent: {why}",
                    job.grant_id
                );
                return Some(set_aside(ctx, &job, error));
            }
        };
        let turn = wait_for_turn(ctx, &job).await?;
        let started_at = Utc::now();
        let clock = Instant::now();
        let answer = match turn {
            Ok(turn) => {
                ctx.dodo
                    .fulfill(turn, &job.grant_id, &request(&job.key, &key))
                    .await
            }
            Err(e) => Err(e),
        };
        let duration = clock.elapsed();
        let http_status = answer.as_ref().ok().map(|a| i32::from(a.status));
        record_call_metrics(duration, http_status);
        let lookup = match decide::needs_lookup(&answer) {
            true => Some(
                ctx.dodo
                    .find_grant(&job.entitlement_id, &job.customer_id, &job.grant_id)
                    .await,
            ),
            false => None,
        };
        let mut decision = decide::decide(&answer, lookup.as_ref(), &key, ctx.budget(&job));
        // Dodo's messages are kept in attempts and the job; one that quotes our key must not
        // store it readable.
        decision.error = decision
            .error
            .map(|e| e.replace(key.reveal(), &key.masked()));
        let attempt = |d: &Decision| AttemptRecord {
            key_id: job.key.key_id,
            started_at,
            duration,
            http_status,
            outcome: d.outcome,
            error: d.error.clone(),
        };
        if decision.next == Next::NextKey {
            report(&job, &decision);
            match store::reject_key_and_reserve_next(
                &ctx.db,
                &job,
                &attempt(&decision),
                &ctx.sources,
                ctx.vault.as_deref(),
                &ctx.to,
            )
            .await
            {
                Ok(NextKey::Reserved(next)) => {
                    job.key = next;
                    continue;
                }
                Ok(NextKey::Parked | NextKey::Failed | NextKey::AskAnew | NextKey::LeaseLost) => {
                    return None;
                }
                Err(e) => {
                    let error = format!("rejecting a duplicate key failed: {e}");
                    decision = decide::retry(
                        AttemptOutcome::ConflictUnresolved,
                        error,
                        None,
                        false,
                        ctx.budget(&job),
                    );
                    // The database was out, not Dodo: no attempt is spent, none is failed.
                    if crate::db::is_transient(&e) {
                        decision.next = Next::RetryLater { retry_after: None };
                        decision.counts_as_attempt = false;
                    }
                }
            }
        }
        report(&job, &decision);
        let record = attempt(&decision);
        return Some(completion(ctx, &job, decision, http_status, record));
    }
}

/// Waits for this job's turn to call Dodo, keeping the job's lease for as long as the wait and
/// the call can last (a spent minute budget can mean most of a minute; a call may take up to
/// `dodo.timeout_secs`). `None`: the lease was lost.
async fn wait_for_turn(ctx: &WorkerContext, job: &ClaimedJob) -> Option<Result<Turn, CallError>> {
    let turn = match ctx.dodo.take_turn().await {
        Ok(turn) => turn,
        Err(e) => return Some(Err(e)),
    };
    let needed = turn.wait() + ctx.dodo.timeout();
    if needed > ctx.lease / 2 {
        match store::extend_lease(&ctx.db, &job.grant_id, job.lease_token, needed + ctx.lease).await
        {
            Ok(true) => {}
            Ok(false) => return None,
            // The wait goes on: if the lease runs out, the next owner sends the same key.
            Err(e) => {
                tracing::warn!(grant_id = %job.grant_id, error = %e, "could not extend the lease while waiting for a turn to call Dodo")
            }
        }
    }
    turn.arrive().await;
    Some(Ok(turn))
}

/// Runs `run` (a job's run) so that a panic fails that job instead of leaving it `running`:
/// the outcome names the grant and the cause, and the key stays bound to the grant until a
/// human retries or cancels it. Every other job keeps flowing.
pub async fn guarded(
    ctx: &WorkerContext,
    job: &ClaimedJob,
    run: impl Future<Output = Option<Completion>>,
) -> Option<Completion> {
    let panic = match AssertUnwindSafe(run).catch_unwind().await {
        Ok(outcome) => return outcome,
        Err(panic) => panic,
    };
    let cause = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    let error = format!(
        "internal error while fulfilling grant {}: {}; its key stays bound to it until the job is retried or cancelled",
        job.grant_id,
        printable(&cause, 500)
    );
    Some(set_aside(ctx, job, error))
}

/// Fails one job that cannot go on (a panic, a key that cannot be read) with `error`, keeping
/// its key bound to it; said at error level.
fn set_aside(ctx: &WorkerContext, job: &ClaimedJob, error: String) -> Completion {
    let decision = Decision {
        next: Next::Finish(JobState::Failed),
        key: KeyAction::Keep,
        outcome: AttemptOutcome::InternalError,
        error: Some(error),
        severity: Severity::Error,
        counts_as_attempt: true,
    };
    tracing::error!(grant_id = %job.grant_id, error = decision.error.as_deref(), "job set aside as failed");
    let attempt = AttemptRecord {
        key_id: job.key.key_id,
        started_at: Utc::now(),
        duration: Duration::ZERO,
        http_status: None,
        outcome: decision.outcome,
        error: decision.error.clone(),
    };
    completion(ctx, job, decision, None, attempt)
}

/// The body of the fulfill call: the key, and the pool's options.
fn request(key: &ReservedKey, value: &LicenseKey) -> FulfillRequest {
    FulfillRequest {
        key: value.clone(),
        activations_limit: key.activations_limit,
        expires_at: key
            .expires_in_days
            .and_then(|days| TimeDelta::try_days(days.into()))
            .and_then(|days| Utc::now().checked_add_signed(days))
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    }
}

/// The decision as the store records it: the job's state, and when it runs next.
fn completion(
    ctx: &WorkerContext,
    job: &ClaimedJob,
    decision: Decision,
    http_status: Option<i32>,
    attempt: AttemptRecord,
) -> Completion {
    let now = Utc::now();
    let (state, run_at) = match decision.next {
        Next::Finish(state) => (state, now),
        Next::RetryLater { retry_after } => {
            let delay = ctx
                .retry
                .delay(job.attempts.max(0) as u32, retry_after, &mut rand::rng());
            (JobState::Retrying, later(now, delay))
        }
        // Rejecting at once was not possible: the key is rejected with the outcome instead,
        // and the next claim reserves a new one.
        Next::NextKey => (JobState::Retrying, now),
    };
    Completion {
        grant_id: job.grant_id.clone(),
        lease_token: job.lease_token,
        key_id: job.key.key_id,
        state,
        run_at,
        key_action: decision.key,
        refund_attempt: !decision.counts_as_attempt,
        error: decision.error,
        http_status,
        attempt,
    }
}

/// `delay` after `now`; `now` if that overflows.
pub(super) fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

fn report(job: &ClaimedJob, decision: &Decision) {
    let grant_id = job.grant_id.as_str();
    let outcome = decision.outcome.as_str();
    let error = decision.error.as_deref().unwrap_or("");
    let what = match decision.next {
        Next::Finish(JobState::Delivered) => "delivered",
        Next::Finish(JobState::Cancelled) => "job cancelled",
        Next::Finish(_) => "job failed",
        Next::RetryLater { .. } => "will retry",
        Next::NextKey => "key value already exists at Dodo; rejected, trying the next key",
    };
    let attempt = job.attempts;
    match decision.severity {
        Severity::Info => tracing::info!(grant_id, outcome, "{what}"),
        Severity::Warn => tracing::warn!(grant_id, outcome, error, attempt, "{what}"),
        Severity::Error => tracing::error!(grant_id, outcome, error, attempt, "{what}"),
    }
}

fn record_call_metrics(duration: Duration, http_status: Option<i32>) {
    metrics::histogram!("keyrelay_fulfill_duration_seconds").record(duration.as_secs_f64());
    metrics::counter!("keyrelay_fulfill_calls_total", "status" => status_class(http_status))
        .increment(1);
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
