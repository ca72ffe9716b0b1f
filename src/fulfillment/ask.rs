//! The ask step, for pools whose source is asked over the network (`http`): claim jobs that
//! have no key yet, ask their source (`sources::KeySource`, outside any transaction), have the
//! store bind what it answered, and queue the job for Dodo with its key — or retry (5xx, 429,
//! timeouts, with the same idempotency key) or fail it (another 4xx, no key in the answer).
//! Each job's call runs on its own: a slow endpoint delays only its own grant.

use std::time::Duration;

use chrono::Utc;

use super::WorkerContext;
use crate::domain::{JobState, LicenseKey};
use crate::sources::http::idempotency_key;
use crate::sources::{KeySource, SourceError, Yield};
use crate::store::asking::{self, KeylessJob, Received};

/// Time kept in the lease after a call's timeout, to record its answer.
const RECORD_MARGIN: Duration = Duration::from_secs(5);

/// Asks endpoints for the keys of up to `limit` jobs, all at once, and waits for every one;
/// how many jobs were claimed. For tests and tools that drive the queue step by step.
pub async fn fetch_keys(ctx: &WorkerContext, limit: usize) -> Result<usize, sqlx::Error> {
    let jobs = asking::claim_keyless(&ctx.db, limit, ctx.lease).await?;
    let claimed = jobs.len();
    let runs = jobs.into_iter().map(|job| fetch_key(ctx, job));
    for done in futures_util::future::join_all(runs).await {
        done?;
    }
    Ok(claimed)
}

/// One claimed job: asks its endpoint for the key, with the lease covering the whole call, and
/// records the answer. A job whose earlier leases all ran out mid-call (its workers stopped)
/// fails once it is past `worker.max_attempts`, so a grant never loops without end.
pub async fn fetch_key(ctx: &WorkerContext, job: KeylessJob) -> Result<(), sqlx::Error> {
    let attempt = job.attempts.max(0) as u32;
    if attempt > ctx.max_attempts {
        let error = format!(
            "gave up after {} attempts: each time the worker stopped before key source `{}` answered; check the workers' logs, then retry the job",
            ctx.max_attempts,
            job.endpoint()
        );
        tracing::error!(grant_id = %job.grant_id, pool = %job.pool(), error = %error, "no key from the endpoint; job failed");
        asking::settle_keyless(
            &ctx.db,
            &job,
            JobState::Failed,
            Utc::now(),
            false,
            &error,
            &ctx.to,
        )
        .await?;
        return Ok(());
    }
    if let Some(timeout) = ctx.sources.endpoint_timeout(job.endpoint()) {
        let needed = timeout + RECORD_MARGIN;
        if needed > ctx.lease / 2 {
            let lease = needed + ctx.lease;
            if !crate::store::extend_lease(&ctx.db, &job.grant_id, job.lease_token, lease).await? {
                // Another worker owns the job now.
                return Ok(());
            }
        }
    }
    let idempotency = idempotency_key(job.grant_id.as_str(), job.rejected);
    let answer = match ctx.sources.of(&job.recipe).key_for(&job.facts()).await {
        Ok(Yield::Key(key)) => Ok(key),
        Ok(Yield::Stock) => Err(SourceError::Fail(format!(
            "pool `{}` is asked for its keys but answered with none",
            job.pool()
        ))),
        Err(e) => Err(e),
    };
    settle(ctx, &job, &idempotency, answer).await
}

async fn settle(
    ctx: &WorkerContext,
    job: &KeylessJob,
    idempotency: &str,
    answer: Result<LicenseKey, SourceError>,
) -> Result<(), sqlx::Error> {
    let grant_id = job.grant_id.as_str();
    let failed = |error: String| async move {
        tracing::error!(grant_id, pool = %job.pool(), error = %error, "no key from the endpoint; job failed");
        asking::settle_keyless(
            &ctx.db,
            job,
            JobState::Failed,
            Utc::now(),
            false,
            &error,
            &ctx.to,
        )
        .await
    };
    match answer {
        Ok(key) => {
            let vault = match ctx.vault() {
                Ok(vault) => vault,
                Err(why) => return failed(why).await.map(drop),
            };
            match asking::record_received(&ctx.db, vault, job, idempotency, &key, &ctx.to).await? {
                Received::Bound => {
                    tracing::info!(grant_id, pool = %job.pool(), "key received from the endpoint")
                }
                Received::LeaseLost => tracing::warn!(
                    grant_id,
                    pool = %job.pool(),
                    key = %key,
                    "the endpoint answered after another worker took the job over; its key is recorded as an orphan to revoke at the vendor"
                ),
                Received::Duplicate => tracing::error!(
                    grant_id,
                    pool = %job.pool(),
                    key = %key,
                    "the endpoint answered a key that is already stored; job failed"
                ),
            }
        }
        Err(SourceError::Fail(error)) => {
            failed(error).await?;
        }
        Err(SourceError::Retry {
            error,
            retry_after,
            slow_down,
        }) => {
            let attempt = job.attempts.max(0) as u32;
            if !slow_down && attempt >= ctx.max_attempts {
                failed(format!(
                    "gave up after {attempt} attempts; last error: {error}"
                ))
                .await?;
                return Ok(());
            }
            let delay = ctx.retry.delay(attempt, retry_after, &mut rand::rng());
            let run_at = super::run::later(Utc::now(), delay);
            tracing::warn!(grant_id, pool = %job.pool(), error = %error, "the endpoint gave no key; will retry with the same idempotency key");
            asking::settle_keyless(
                &ctx.db,
                job,
                JobState::Retrying,
                run_at,
                slow_down,
                &error,
                &ctx.to,
            )
            .await?;
        }
    }
    Ok(())
}
