//! Settling: worker outcomes recorded under the lease (fencing), and lifecycle events applied
//! to a job; both move keys through `key_changes` and owe their notices (`outbox`).

use crate::db::Db;
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::key_changes::{KeyChange, change_keys, supersede};
use super::outbox::{ENDED, Recipients, failure_notices};
use crate::domain::{Actor, AttemptOutcome, GrantId, JobState, KeyAction, KeyState};

/// One call to Dodo's fulfill endpoint, as recorded in `attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub key_id: i64,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<i32>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// The outcome of a claimed job, recorded only if the lease is still ours.
#[derive(Debug, Clone)]
pub struct Completion {
    pub grant_id: GrantId,
    pub lease_token: i64,
    pub key_id: i64,
    pub state: JobState,
    pub run_at: DateTime<Utc>,
    pub key_action: KeyAction,
    pub error: Option<String>,
    pub http_status: Option<i32>,
    /// Give back the attempt the claim counted (Dodo rate-limited the call).
    pub refund_attempt: bool,
    pub attempt: AttemptRecord,
}

/// Records attempts (one per grant, in order), and Dodo's answers among them per minute for
/// the charts (one row per minute and answer, whatever the batch's size).
pub(super) async fn insert_attempts(
    tx: &mut Transaction<'_, Postgres>,
    grant_ids: &[GrantId],
    attempts: &[&AttemptRecord],
) -> Result<(), sqlx::Error> {
    let key_ids: Vec<i64> = attempts.iter().map(|a| a.key_id).collect();
    let started: Vec<DateTime<Utc>> = attempts.iter().map(|a| a.started_at).collect();
    let durations: Vec<i32> = attempts
        .iter()
        .map(|a| a.duration.as_millis().min(i32::MAX as u128) as i32)
        .collect();
    let statuses: Vec<Option<i32>> = attempts.iter().map(|a| a.http_status).collect();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    sqlx::query(
        r#"
        WITH recorded AS (
            INSERT INTO attempts (grant_id, key_id, started_at, duration_ms, http_status, outcome, error)
            SELECT * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::int4[], $5::int4[],
                                 $6::text[], $7::text[])
            RETURNING started_at, http_status, outcome
        )
        INSERT INTO answer_tallies (minute, series, n)
        SELECT tally_minute(started_at), answer_class(http_status), count(*) FROM recorded
        WHERE outcome NOT IN ('internal_error', 'no_key')
        GROUP BY 1, 2
        "#,
    )
    .bind(grant_ids)
    .bind(&key_ids)
    .bind(&started)
    .bind(&durations)
    .bind(&statuses)
    .bind(&outcomes)
    .bind(&errors)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records many outcomes in one transaction. An outcome whose lease token no longer matches
/// (the lease expired and another worker took the job) changes nothing but its attempt record.
/// Returns the grant ids whose outcome was applied.
/// A delivered grant's notice goes to `to`, with the revocation of any key it supersedes; a
/// failed grant's notice too.
pub async fn complete_batch(
    db: &Db,
    batch: &[Completion],
    to: &Recipients,
) -> Result<Vec<GrantId>, sqlx::Error> {
    // One lock order for every batch, so two completers cannot deadlock.
    let mut batch: Vec<&Completion> = batch.iter().collect();
    batch.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    let grant_ids: Vec<GrantId> = batch.iter().map(|c| c.grant_id.clone()).collect();
    let tokens: Vec<i64> = batch.iter().map(|c| c.lease_token).collect();
    let states: Vec<JobState> = batch.iter().map(|c| c.state).collect();
    let run_ats: Vec<DateTime<Utc>> = batch.iter().map(|c| c.run_at).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|c| c.error.as_deref()).collect();
    let statuses: Vec<Option<i32>> = batch.iter().map(|c| c.http_status).collect();
    let refunds: Vec<bool> = batch.iter().map(|c| c.refund_attempt).collect();
    let mut tx = db.begin().await?;
    // Each applied outcome, and whether it delivered a grant of a subscription (only such a
    // grant can supersede another, so the rest need no look).
    let applied: Vec<(GrantId, bool)> = sqlx::query_as(&apply_outcomes())
        .bind(&grant_ids)
        .bind(&tokens)
        .bind(&states)
        .bind(&run_ats)
        .bind(&errors)
        .bind(&statuses)
        .bind(&refunds)
        .bind(to.shop)
        .fetch_all(&mut *tx)
        .await?;
    let attempts: Vec<&AttemptRecord> = batch.iter().map(|c| &c.attempt).collect();
    insert_attempts(&mut tx, &grant_ids, &attempts).await?;
    let supersedes: Vec<GrantId> = applied
        .iter()
        .filter(|(_, supersedes)| *supersedes)
        .map(|(grant_id, _)| grant_id.clone())
        .collect();
    let applied: Vec<GrantId> = applied.into_iter().map(|(grant_id, _)| grant_id).collect();
    let applied_set: HashSet<&GrantId> = applied.iter().collect();
    let details: Vec<String> = batch.iter().map(|c| format!("job {}", c.state)).collect();
    let changes: Vec<KeyChange> = batch
        .iter()
        .zip(&details)
        .filter(|(c, _)| applied_set.contains(&c.grant_id))
        .map(|(c, detail)| KeyChange {
            key_id: c.key_id,
            grant_id: &c.grant_id,
            action: c.key_action,
            detail,
            reason: None,
        })
        .collect();
    change_keys(&mut tx, &changes, Actor::Worker, to).await?;
    supersede(&mut tx, &supersedes, Actor::Worker, to).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Whether a newer grant of the job's subscription and entitlement has been delivered.
const SUPERSEDED: &str = "(jobs.subscription_id IS NOT NULL AND EXISTS ( \
    SELECT 1 FROM jobs newer \
    WHERE newer.subscription_id = jobs.subscription_id \
      AND newer.entitlement_id = jobs.entitlement_id \
      AND newer.state = 'delivered' AND newer.grant_id <> jobs.grant_id \
      AND coalesce(newer.grant_created_at, newer.created_at) \
          > coalesce(jobs.grant_created_at, jobs.created_at)))";

/// A job as a lifecycle event finds it, locked until the transaction ends.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobForEvent {
    pub state: JobState,
    pub key_id: Option<i64>,
    /// The look-up hash of the job's key (`crypto::Vault::hash`).
    pub key_hash: Option<Vec<u8>>,
    pub key_state: Option<KeyState>,
    /// The grant's `updated_at` from the newest lifecycle event applied.
    pub grant_updated_at: Option<DateTime<Utc>>,
    /// A newer grant of the same subscription and entitlement has been delivered.
    pub superseded: bool,
}

/// Locks the grant's job (if any) and reads what a lifecycle event needs to decide.
pub async fn lock_job_for_event(
    tx: &mut Transaction<'_, Postgres>,
    grant_id: &GrantId,
) -> Result<Option<JobForEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT jobs.state, jobs.key_id, key_values.value_hash AS key_hash, \
                keys.state AS key_state, jobs.grant_updated_at, {SUPERSEDED} AS superseded \
         FROM jobs LEFT JOIN keys ON keys.id = jobs.key_id \
              LEFT JOIN key_values ON key_values.key_id = jobs.key_id \
         WHERE jobs.grant_id = $1 FOR UPDATE OF jobs"
    );
    sqlx::query_as(&sql)
        .bind(grant_id)
        .fetch_optional(&mut **tx)
        .await
}

/// What a lifecycle event does to a job that exists.
#[derive(Debug, Clone, Copy)]
pub struct EventSettlement<'a> {
    /// The grant's `updated_at` this event carries; later events older than it are stale.
    pub at: Option<DateTime<Utc>>,
    /// The job's new state, if it changes (then `note` becomes its last error).
    pub job_state: Option<JobState>,
    pub key_action: KeyAction,
    pub note: &'a str,
    /// Dodo's revocation reason, for the notices.
    pub reason: Option<&'a str>,
}

/// Applies a lifecycle event to the grant's job and its key (both audited), inside `tx`, with
/// the notices it owes `to`.
pub async fn settle_by_event(
    tx: &mut Transaction<'_, Postgres>,
    grant_id: &GrantId,
    key_id: Option<i64>,
    settlement: EventSettlement<'_>,
    actor: Actor,
    to: &Recipients,
) -> Result<(), sqlx::Error> {
    // A failure notice only for a job this event moves to failed, not one already there.
    sqlx::query(&format!(
        r#"
        WITH ended AS (
        UPDATE jobs SET grant_updated_at = greatest(grant_updated_at, $2),
                        state = coalesce($3, state),
                        lease_token = CASE WHEN $3 IS NULL THEN lease_token END,
                        finished_at = CASE WHEN $3 IS NULL THEN finished_at ELSE now() END,
                        last_error = CASE WHEN $3 IS NULL THEN last_error ELSE $4 END,
                        updated_at = now()
        WHERE grant_id = $1
        RETURNING {ENDED}
        )
        {notices}
        "#,
        notices = failure_notices("$5 AND $3 IS NOT NULL"),
    ))
    .bind(grant_id)
    .bind(settlement.at)
    .bind(settlement.job_state)
    .bind(settlement.note)
    .bind(to.shop)
    .execute(&mut **tx)
    .await?;
    if let Some(key_id) = key_id {
        let change = KeyChange {
            key_id,
            grant_id,
            action: settlement.key_action,
            detail: settlement.note,
            reason: settlement.reason,
        };
        change_keys(tx, &[change], actor, to).await?;
    }
    if settlement.job_state == Some(JobState::Delivered) {
        supersede(tx, std::slice::from_ref(grant_id), actor, to).await?;
    }
    if let Some(state) = settlement.job_state {
        super::audit::record(
            &mut **tx,
            actor,
            "settle",
            super::audit::Subject {
                grant_id: Some(grant_id),
                detail: Some(&format!("job {state}: {}", settlement.note)),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(())
}

/// The statement `complete_batch` applies its outcomes with ($1 to $7: the outcomes' grant
/// ids, lease tokens, states, run-at times, errors, HTTP statuses and refunds; $8: whether the
/// shop hears of failures). The lease token alone fences each outcome: a job holds one exactly
/// while it runs (check `jobs_lease_only_while_running`). A `state = 'running'` beside it let
/// a plan trust a statistic taken while nothing ran, read every running job for every
/// outcome, and take a second to settle 512 jobs of a burst.
pub fn apply_outcomes() -> String {
    format!(
        r#"
        WITH outcome AS (
            SELECT * FROM unnest($1::text[], $2::int8[], $3::job_state[], $4::timestamptz[],
                                 $5::text[], $6::int4[], $7::bool[])
                AS outcome(grant_id, lease_token, state, run_at, last_error, http_status, refund)
        ), ended AS (
        UPDATE jobs SET state = outcome.state,
                        run_at = outcome.run_at,
                        lease_token = NULL,
                        last_error = outcome.last_error,
                        last_http_status = outcome.http_status,
                        attempts = jobs.attempts - CASE WHEN outcome.refund THEN 1 ELSE 0 END,
                        finished_at = CASE WHEN outcome.state IN ('delivered', 'failed', 'cancelled')
                                           THEN now() END,
                        updated_at = now()
        FROM outcome
        WHERE jobs.grant_id = outcome.grant_id AND jobs.lease_token = outcome.lease_token
        RETURNING {ENDED}, jobs.subscription_id
        ), noticed AS (
            {notices}
        )
        SELECT grant_id, subscription_id IS NOT NULL AND state = 'delivered' FROM ended
        "#,
        notices = failure_notices("$8"),
    )
}
