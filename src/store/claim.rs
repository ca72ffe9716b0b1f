//! Claiming: due jobs are taken with their keys in one short transaction, committed before any
//! call to Dodo. A key Dodo already holds is rejected and the next one reserved under the same
//! lease. Jobs that find no key are parked until keys arrive.

use crate::db::Db;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::make::{fail_without_key, make_keys};
use super::settle::{AttemptRecord, KeyChange, change_keys, insert_attempts};
use super::{KEY_LOCK_CLASS, TAKE_LEASE};
use crate::crypto::Vault;
use crate::domain::{Actor, CustomerId, EntitlementId, GrantId, KeyAction, LicenseKey};
use crate::sources::KeyMaker;

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

/// The key bound to a job (sealed, as stored), with the pool's fulfillment options.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservedKey {
    pub key_id: i64,
    pub value_sealed: Vec<u8>,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
}

impl ReservedKey {
    /// The key's value; an error that says why it cannot be read.
    pub fn open(&self, vault: &Vault) -> Result<LicenseKey, String> {
        super::sealed::open_key(vault, self.key_id, &self.value_sealed)
    }
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
    pool: &Db,
    limit: usize,
    lease: Duration,
    maker: &KeyMaker,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The claim also takes the shared key lock of every entitlement that needs a key, so the
    // reservation below (a new statement, a new snapshot) sees any import that committed first.
    let rows: Vec<ClaimedRow> = sqlx::query_as(&format!(
        r#"
        WITH due AS (
            SELECT grant_id FROM jobs
            WHERE state IN ('queued', 'retrying', 'running') AND run_at <= now()
              -- A job of an http pool gets its key from the endpoint step first.
              AND (key_id IS NOT NULL OR entitlement_id NOT IN
                     (SELECT entitlement_id FROM pools WHERE source = 'http'))
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
    let keyless: Vec<(GrantId, EntitlementId)> = rows
        .iter()
        .filter(|r| r.key_id.is_none())
        .map(|r| (r.grant_id.clone(), r.entitlement_id.clone()))
        .collect();
    let sticky: Vec<i64> = rows.iter().filter_map(|r| r.key_id).collect();
    let mut keys: HashMap<GrantId, ReservedKey> = HashMap::new();
    if !keyless.is_empty() {
        keys.extend(reserve_keys(&mut tx, &keyless).await?);
        let unserved: Vec<(GrantId, EntitlementId)> = keyless
            .into_iter()
            .filter(|(grant, _)| !keys.contains_key(grant))
            .collect();
        let made = make_keys(&mut tx, &unserved, maker).await?;
        keys.extend(made.keys);
        fail_without_key(&mut tx, &made.failed).await?;
        let parked: Vec<GrantId> = unserved
            .into_iter()
            .map(|(grant, _)| grant)
            .filter(|grant| {
                !keys.contains_key(grant) && !made.failed.iter().any(|(g, _)| g == grant)
            })
            .collect();
        park_waiting_for_keys(&mut tx, &parked).await?;
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

/// Reserves one available key per (grant, entitlement), oldest import first, skipping keys
/// another transaction holds. Binds each key to its grant on both rows, audited. Grants missing
/// from the answer found no key. The caller holds the entitlements' shared key lock (taken
/// before this statement, so its snapshot sees every committed import).
async fn reserve_keys(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &[(GrantId, EntitlementId)],
) -> Result<Vec<(GrantId, ReservedKey)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Reserved {
        grant_id: GrantId,
        #[sqlx(flatten)]
        key: ReservedKey,
    }
    let (grants, entitlements): (Vec<&GrantId>, Vec<&EntitlementId>) =
        wanted.iter().map(|(g, e)| (g, e)).unzip();
    let reserved: Vec<Reserved> = sqlx::query_as(
        r#"
        WITH need AS (
            SELECT wanted.grant_id, wanted.entitlement_id,
                   row_number() OVER (PARTITION BY wanted.entitlement_id ORDER BY wanted.grant_id) AS rank
            FROM unnest($1::text[], $2::text[]) AS wanted(grant_id, entitlement_id)
        ), need_per_entitlement AS (
            SELECT entitlement_id, count(*) AS wanted FROM need GROUP BY entitlement_id
        ), picked AS (
            SELECT free.id, need_per_entitlement.entitlement_id,
                   row_number() OVER (PARTITION BY need_per_entitlement.entitlement_id ORDER BY free.id) AS rank
            FROM need_per_entitlement
            JOIN pools ON pools.entitlement_id = need_per_entitlement.entitlement_id
            CROSS JOIN LATERAL (
                SELECT keys.id FROM keys
                WHERE keys.pool_id = pools.id AND keys.state = 'available'
                ORDER BY keys.id
                LIMIT need_per_entitlement.wanted
                FOR UPDATE SKIP LOCKED
            ) free
        ), pairs AS (
            SELECT need.grant_id, picked.id AS key_id
            FROM need JOIN picked USING (entitlement_id, rank)
        ), reserved AS (
            UPDATE keys SET state = 'reserved', grant_id = pairs.grant_id, updated_at = now()
            FROM pairs WHERE keys.id = pairs.key_id
        ), bound AS (
            UPDATE jobs SET key_id = pairs.key_id, updated_at = now()
            FROM pairs WHERE jobs.grant_id = pairs.grant_id
        ), audited AS (
            INSERT INTO audit_log (actor, action, grant_id, key_id)
            SELECT 'worker', 'reserve', grant_id, key_id FROM pairs
        )
        SELECT pairs.grant_id, keys.id AS key_id, keys.value_sealed, pools.activations_limit,
               pools.expires_in_days
        FROM pairs JOIN keys ON keys.id = pairs.key_id JOIN pools ON pools.id = keys.pool_id
        "#,
    )
    .bind(&grants)
    .bind(&entitlements)
    .fetch_all(&mut **tx)
    .await?;
    Ok(reserved.into_iter().map(|r| (r.grant_id, r.key)).collect())
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
        UPDATE jobs SET state = 'waiting_for_keys', lease_token = NULL, run_at = now(),
                        attempts = attempts - 1, updated_at = now(),
                        last_error = 'no available key in the pool for entitlement ' || entitlement_id
        WHERE grant_id = ANY($1)
        RETURNING grant_id, entitlement_id,
                  (SELECT name FROM pools WHERE pools.entitlement_id = jobs.entitlement_id)
        "#,
    )
    .bind(grant_ids)
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
    /// The pool's endpoint issues the next key: the job is queued for the endpoint step,
    /// which asks with a new idempotency key.
    FromEndpoint,
    /// Another worker owns the job now; stop.
    LeaseLost,
}

/// Queues the job again without a key if its pool is an `http` pool; whether it was.
async fn from_endpoint(
    tx: &mut Transaction<'_, Postgres>,
    grant_id: &GrantId,
) -> Result<bool, sqlx::Error> {
    let requeued = sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_token = NULL, run_at = now(), updated_at = now() \
         WHERE grant_id = $1 AND entitlement_id IN (SELECT entitlement_id FROM pools WHERE source = 'http')",
    )
    .bind(grant_id)
    .execute(&mut **tx)
    .await?;
    Ok(requeued.rows_affected() == 1)
}

/// Moves the end of a running job's lease to `lease` from now; false if the lease was lost.
pub async fn extend_lease(
    pool: &Db,
    grant_id: &GrantId,
    lease_token: i64,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let extended = sqlx::query(
        "UPDATE jobs SET run_at = now() + make_interval(secs => $3), updated_at = now() \
         WHERE grant_id = $1 AND lease_token = $2 AND state = 'running'",
    )
    .bind(grant_id)
    .bind(lease_token)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(extended.rows_affected() == 1)
}

/// Marks the job's key `rejected` (never offered again), records the attempt, and reserves the
/// next key for the same grant (made anew for `generate` and `sign` pools) — or parks the job
/// if the pool is empty. Fenced by the lease.
pub async fn reject_key_and_reserve_next(
    pool: &Db,
    job: &ClaimedJob,
    attempt: &AttemptRecord,
    maker: &KeyMaker,
) -> Result<NextKey, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let owned = sqlx::query(
        "SELECT 1 FROM jobs WHERE grant_id = $1 AND lease_token = $2 AND state = 'running' \
         AND key_id = $3 FOR UPDATE",
    )
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
    };
    change_keys(&mut tx, &[rejected], Actor::Worker).await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
        .bind(KEY_LOCK_CLASS)
        .bind(&job.entitlement_id)
        .execute(&mut *tx)
        .await?;
    let wanted = [(job.grant_id.clone(), job.entitlement_id.clone())];
    let mut next = reserve_keys(&mut tx, &wanted).await?.pop();
    if next.is_none() {
        let made = make_keys(&mut tx, &wanted, maker).await?;
        if !made.failed.is_empty() {
            fail_without_key(&mut tx, &made.failed).await?;
            tx.commit().await?;
            return Ok(NextKey::Failed);
        }
        next = made.keys.into_iter().next();
    }
    let next = match next {
        Some((_, key)) => NextKey::Reserved(key),
        None if from_endpoint(&mut tx, &job.grant_id).await? => NextKey::FromEndpoint,
        None => {
            park_waiting_for_keys(&mut tx, std::slice::from_ref(&job.grant_id)).await?;
            NextKey::Parked
        }
    };
    tx.commit().await?;
    Ok(next)
}
