//! Claiming: due jobs are taken with their keys in one short transaction, committed before any
//! call to Dodo. A key Dodo already holds is rejected and the next one reserved under the same
//! lease. Jobs that find no key are parked until keys arrive.

use crate::db::Db;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

pub use super::bind::ReservedKey;
use super::bind::{Keyless, supply_keys};
use super::key_changes::{KeyChange, change_keys};
use super::outbox::{ENDED, Recipients, failure_notices};
use super::settle::{AttemptRecord, insert_attempts};
use super::{ASKED_ELSEWHERE, DUE, KEY_LOCK_CLASS, LEASE_FENCE, TAKE_LEASE, moved};
use crate::crypto::Vault;
use crate::domain::{Actor, CustomerId, EntitlementId, GrantId, JobState, KeyAction};
use crate::jobs::JobEvent;
use crate::sources::Sources;

/// A job this worker now owns until its lease ends.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub grant_id: GrantId,
    pub entitlement_id: EntitlementId,
    pub customer_id: CustomerId,
    pub lease_token: i64,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub key: ReservedKey,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    grant_id: GrantId,
    entitlement_id: EntitlementId,
    customer_id: CustomerId,
    lease_token: i64,
    attempts: i32,
    created_at: DateTime<Utc>,
    key_id: Option<i64>,
}

/// Claims up to `limit` due jobs (queued, retrying, or running with an expired lease), counts
/// the attempt, sets a lease, and reserves a key for each job that has none — all in one
/// short transaction, committed before any call to Dodo. Jobs for which no key exists are
/// parked in `waiting_for_keys` without using an attempt and are not returned.
pub async fn claim_batch(
    db: &Db,
    limit: usize,
    lease: Duration,
    sources: &Sources,
    vault: Option<&Vault>,
    to: &Recipients,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The claim also takes the shared key lock of every entitlement that needs a key, so the
    // reservation below (a new statement, a new snapshot) sees any import that committed first.
    let rows: Vec<ClaimedRow> = sqlx::query_as(&format!(
        r#"
        WITH due AS (
            SELECT grant_id FROM jobs
            WHERE {DUE} AND NOT ({ASKED_ELSEWHERE})
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE jobs SET {TAKE_LEASE}
            FROM due WHERE jobs.grant_id = due.grant_id
            RETURNING jobs.grant_id, jobs.entitlement_id, jobs.customer_id, jobs.lease_token,
                      jobs.attempts, jobs.created_at, jobs.key_id
        ), key_locks AS (
            SELECT count(pg_advisory_xact_lock_shared($3, hashtext(entitlement_id))) AS taken
            FROM (SELECT DISTINCT entitlement_id FROM claimed WHERE key_id IS NULL ORDER BY 1) AS keyless
        )
        SELECT claimed.* FROM claimed, key_locks
        "#
    ))
    .bind(limit as i64)
    .bind(lease.as_secs_f64())
    .bind(KEY_LOCK_CLASS)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let keyless: Vec<Keyless> = rows
        .iter()
        .filter(|r| r.key_id.is_none())
        .map(|r| Keyless {
            grant_id: r.grant_id.clone(),
            entitlement_id: r.entitlement_id.clone(),
            customer_id: r.customer_id.clone(),
        })
        .collect();
    let sticky: Vec<i64> = rows.iter().filter_map(|r| r.key_id).collect();
    let mut keys: HashMap<GrantId, ReservedKey> = HashMap::new();
    if !keyless.is_empty() {
        // Jobs of sources that are asked are never claimed here (`ASKED_ELSEWHERE`).
        let supplied = supply_keys(&mut tx, &keyless, sources, vault).await?;
        keys.extend(supplied.keys);
        fail_without_key(&mut tx, &supplied.failed, to).await?;
        park_waiting_for_keys(&mut tx, &supplied.no_key).await?;
    }
    if !sticky.is_empty() {
        let by_id: HashMap<i64, ReservedKey> = key_details(&mut tx, &sticky)
            .await?
            .into_iter()
            .map(|k| (k.key_id, k))
            .collect();
        for r in &rows {
            if let Some(key) = r.key_id.and_then(|id| by_id.get(&id)) {
                keys.insert(r.grant_id.clone(), key.clone());
            }
        }
    }
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let key = keys.remove(&r.grant_id)?;
            Some(ClaimedJob {
                grant_id: r.grant_id,
                entitlement_id: r.entitlement_id,
                customer_id: r.customer_id,
                lease_token: r.lease_token,
                attempts: r.attempts,
                created_at: r.created_at,
                key,
            })
        })
        .collect())
}

/// The keys with these ids, with their pool's fulfillment options.
async fn key_details(
    tx: &mut Transaction<'_, Postgres>,
    key_ids: &[i64],
) -> Result<Vec<ReservedKey>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT keys.id AS key_id, keys.value_sealed, pools.activations_limit, pools.expires_in_days
        FROM keys JOIN pools ON pools.id = keys.pool_id
        WHERE keys.id = ANY($1)
        "#,
    )
    .bind(key_ids)
    .fetch_all(&mut **tx)
    .await
}

/// Parks claimed jobs that found no key, giving back the attempt their claim counted.
async fn park_waiting_for_keys(
    tx: &mut Transaction<'_, Postgres>,
    grant_ids: &[GrantId],
) -> Result<(), sqlx::Error> {
    if grant_ids.is_empty() {
        return Ok(());
    }
    let parked: Vec<(GrantId, EntitlementId, Option<String>)> = sqlx::query_as(
        r#"
        UPDATE jobs SET state = $2, lease_token = NULL, run_at = now(),
                        attempts = attempts - 1, updated_at = now(),
                        last_error = 'no available key in the pool for entitlement ' || entitlement_id
        WHERE grant_id = ANY($1)
        RETURNING grant_id, entitlement_id,
                  (SELECT name FROM pools WHERE pools.entitlement_id = jobs.entitlement_id)
        "#,
    )
    .bind(grant_ids)
    .bind(moved(JobState::Running, JobEvent::NoKey))
    .fetch_all(&mut **tx)
    .await?;
    // A paying customer without a key: say so once, when the job is parked.
    for (grant_id, entitlement_id, pool) in parked {
        match pool {
            Some(pool) => {
                tracing::warn!(%grant_id, pool = %pool, "grant waits for keys: pool `{pool}` has no available key; import more with `keyrelay pool import {pool} FILE`")
            }
            None => {
                tracing::warn!(%grant_id, %entitlement_id, "grant waits for keys: no pool serves entitlement {entitlement_id}; create one with `keyrelay pool add`")
            }
        }
    }
    Ok(())
}

/// The answer to "our key already exists at Dodo".
#[derive(Debug)]
pub enum NextKey {
    /// Try again at once with this key.
    Reserved(ReservedKey),
    /// The pool is empty: the job now waits for keys.
    Parked,
    /// The pool could not make a new key: the job failed with the reason.
    Failed,
    /// The pool's source is asked for the next key: the job is handed to the ask step, which
    /// asks with a new idempotency key.
    AskAnew,
    /// Another worker owns the job now; stop.
    LeaseLost,
}

/// Hands a running job to the ask step without a key: its source is asked anew.
async fn ask_anew(tx: &mut Transaction<'_, Postgres>, job: &ClaimedJob) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE jobs SET state = $3, lease_token = NULL, run_at = now(), updated_at = now() \
         WHERE {LEASE_FENCE}"
    ))
    .bind(&job.grant_id)
    .bind(job.lease_token)
    .bind(moved(JobState::Running, JobEvent::Handoff))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves the end of a running job's lease to `lease` from now; false if the lease was lost.
pub async fn extend_lease(
    db: &Db,
    grant_id: &GrantId,
    lease_token: i64,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let extended = sqlx::query(&format!(
        "UPDATE jobs SET run_at = now() + make_interval(secs => $3), updated_at = now() \
         WHERE {LEASE_FENCE}"
    ))
    .bind(grant_id)
    .bind(lease_token)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?;
    Ok(extended.rows_affected() == 1)
}

/// Marks the job's key `rejected` (never offered again), records the attempt, and reserves the
/// next key for the same grant (made anew for `generate` and `sign` pools) — or parks the job
/// if the pool is empty. Fenced by the lease.
pub async fn reject_key_and_reserve_next(
    db: &Db,
    job: &ClaimedJob,
    attempt: &AttemptRecord,
    sources: &Sources,
    vault: Option<&Vault>,
    to: &Recipients,
) -> Result<NextKey, sqlx::Error> {
    let mut tx = db.begin().await?;
    let owned = sqlx::query(&format!(
        "SELECT 1 FROM jobs WHERE {LEASE_FENCE} AND key_id = $3 FOR UPDATE"
    ))
    .bind(&job.grant_id)
    .bind(job.lease_token)
    .bind(job.key.key_id)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    insert_attempts(&mut tx, std::slice::from_ref(&job.grant_id), &[attempt]).await?;
    if !owned {
        tx.commit().await?;
        return Ok(NextKey::LeaseLost);
    }
    let rejected = KeyChange {
        key_id: job.key.key_id,
        grant_id: &job.grant_id,
        action: KeyAction::Reject,
        detail: "Dodo already has this key value",
        reason: None,
    };
    change_keys(&mut tx, &[rejected], Actor::Worker, &Recipients::default()).await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
        .bind(KEY_LOCK_CLASS)
        .bind(&job.entitlement_id)
        .execute(&mut *tx)
        .await?;
    let wanted = [Keyless {
        grant_id: job.grant_id.clone(),
        entitlement_id: job.entitlement_id.clone(),
        customer_id: job.customer_id.clone(),
    }];
    let supplied = supply_keys(&mut tx, &wanted, sources, vault).await?;
    let next = if let Some((_, key)) = supplied.keys.into_iter().next() {
        NextKey::Reserved(key)
    } else if !supplied.failed.is_empty() {
        fail_without_key(&mut tx, &supplied.failed, to).await?;
        NextKey::Failed
    } else if !supplied.asked.is_empty() {
        ask_anew(&mut tx, job).await?;
        NextKey::AskAnew
    } else {
        park_waiting_for_keys(&mut tx, &supplied.no_key).await?;
        NextKey::Parked
    };
    tx.commit().await?;
    Ok(next)
}

/// Fails claimed jobs for which no key could be made, with the reason (on the job and as its
/// attempt, outcome `no_key`), and says so at error level: a paying customer waits until
/// someone fixes the pool and retries.
async fn fail_without_key(
    tx: &mut Transaction<'_, Postgres>,
    failed: &[(GrantId, String)],
    to: &Recipients,
) -> Result<(), sqlx::Error> {
    if failed.is_empty() {
        return Ok(());
    }
    let (grants, reasons): (Vec<&GrantId>, Vec<&str>) =
        failed.iter().map(|(g, r)| (g, r.as_str())).unzip();
    sqlx::query(&format!(
        r#"
        WITH ended AS (
            UPDATE jobs SET state = $3, lease_token = NULL, last_error = failed.reason,
                            finished_at = now(), updated_at = now()
            FROM unnest($1::text[], $2::text[]) AS failed(grant_id, reason)
            WHERE jobs.grant_id = failed.grant_id
            RETURNING {ENDED}
        ), noticed AS (
            {notices}
        )
        INSERT INTO attempts (grant_id, started_at, duration_ms, outcome, error)
        SELECT grant_id, now(), 0, 'no_key', last_error FROM ended
        "#,
        notices = failure_notices("$4"),
    ))
    .bind(&grants)
    .bind(&reasons)
    .bind(moved(JobState::Running, JobEvent::Fail))
    .bind(to.shop)
    .execute(&mut **tx)
    .await?;
    for (grant_id, reason) in failed {
        tracing::error!(%grant_id, error = %reason, "no key could be made for the grant; job failed");
    }
    Ok(())
}
