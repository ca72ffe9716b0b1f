//! The SQL of the queue: claim due jobs with their keys, record outcomes under the lease
//! (fencing), reject a key and reserve the next, park and resume jobs waiting for keys.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::audit::{self, Actor, Subject};
use crate::domain::JobState;

/// Advisory-lock class for "keys of an entitlement": workers reserving keys hold it shared,
/// importers and pool creation hold it exclusively, so a job cannot be parked just as keys
/// for it arrive.
pub const KEY_LOCK_CLASS: i32 = 0x6b72_6b31;

/// The NOTIFY channel that says "a job is ready".
pub const JOBS_CHANNEL: &str = "keyrelay_jobs";

/// A job this worker now owns until its lease ends.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub grant_id: String,
    pub entitlement_id: String,
    pub customer_id: String,
    pub lease_token: i64,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub key: ReservedKey,
}

/// The key bound to a job, with the pool's fulfillment options.
#[derive(Clone, sqlx::FromRow)]
pub struct ReservedKey {
    pub key_id: i64,
    pub value: String,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
}

impl std::fmt::Debug for ReservedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservedKey")
            .field("key_id", &self.key_id)
            .field("value", &crate::domain::mask_key(&self.value))
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    grant_id: String,
    entitlement_id: String,
    customer_id: String,
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
    pool: &PgPool,
    limit: usize,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The claim also takes the shared key lock of every entitlement that needs a key, so the
    // reservation below (a new statement, a new snapshot) sees any import that committed first.
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        r#"
        WITH due AS (
            SELECT grant_id FROM jobs
            WHERE state IN ('queued', 'retrying', 'running') AND run_at <= now()
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE jobs SET state = 'running',
                            lease_token = nextval('job_lease_tokens'),
                            run_at = now() + make_interval(secs => $2),
                            attempts = jobs.attempts + 1,
                            updated_at = now()
            FROM due WHERE jobs.grant_id = due.grant_id
            RETURNING jobs.grant_id, jobs.entitlement_id, jobs.customer_id, jobs.lease_token,
                      jobs.attempts, jobs.created_at, jobs.key_id
        ), locked AS (
            SELECT count(pg_advisory_xact_lock_shared($3, hashtext(e))) AS n
            FROM (SELECT DISTINCT entitlement_id AS e FROM claimed WHERE key_id IS NULL ORDER BY 1) AS ents
        )
        SELECT claimed.* FROM claimed, locked
        "#,
    )
    .bind(limit as i64)
    .bind(lease.as_secs_f64())
    .bind(KEY_LOCK_CLASS)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let keyless: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.key_id.is_none())
        .map(|r| (r.grant_id.clone(), r.entitlement_id.clone()))
        .collect();
    let sticky: Vec<i64> = rows.iter().filter_map(|r| r.key_id).collect();
    let mut keys: HashMap<String, ReservedKey> = HashMap::new();
    if !keyless.is_empty() {
        keys.extend(reserve_keys(&mut tx, &keyless).await?);
        let parked: Vec<String> = keyless
            .iter()
            .filter(|(g, _)| !keys.contains_key(g))
            .map(|(g, _)| g.clone())
            .collect();
        park_waiting_for_keys(&mut tx, &parked).await?;
    }
    if !sticky.is_empty() {
        let by_id: HashMap<i64, ReservedKey> = reserved_keys(&mut tx, &sticky)
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
async fn reserved_keys(
    tx: &mut Transaction<'_, Postgres>,
    key_ids: &[i64],
) -> Result<Vec<ReservedKey>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT k.id AS key_id, k.value, p.activations_limit, p.expires_in_days
        FROM keys k JOIN pools p ON p.id = k.pool_id
        WHERE k.id = ANY($1)
        "#,
    )
    .bind(key_ids)
    .fetch_all(&mut **tx)
    .await
}

/// Reserves one available key per (grant, entitlement), oldest import first, skipping keys
/// another transaction holds. Binds each key to its grant on both rows. Returns each grant's
/// key; grants missing from the answer found no key. The caller holds the entitlements' shared
/// key lock (taken before this statement, so its snapshot sees every committed import).
async fn reserve_keys(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &[(String, String)],
) -> Result<Vec<(String, ReservedKey)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Reserved {
        grant_id: String,
        #[sqlx(flatten)]
        key: ReservedKey,
    }
    let (grants, entitlements): (Vec<String>, Vec<String>) = wanted.iter().cloned().unzip();
    let reserved: Vec<Reserved> = sqlx::query_as(
        r#"
        WITH need AS (
            SELECT n.grant_id, n.entitlement_id,
                   row_number() OVER (PARTITION BY n.entitlement_id ORDER BY n.grant_id) AS rn
            FROM unnest($1::text[], $2::text[]) AS n(grant_id, entitlement_id)
        ), wanted AS (
            SELECT entitlement_id, count(*) AS n FROM need GROUP BY entitlement_id
        ), picked AS (
            SELECT k.id, w.entitlement_id,
                   row_number() OVER (PARTITION BY w.entitlement_id ORDER BY k.id) AS rn
            FROM wanted w
            JOIN pools p ON p.entitlement_id = w.entitlement_id
            CROSS JOIN LATERAL (
                SELECT keys.id FROM keys
                WHERE keys.pool_id = p.id AND keys.state = 'available'
                ORDER BY keys.id
                LIMIT w.n
                FOR UPDATE SKIP LOCKED
            ) k
        ), pairs AS (
            SELECT need.grant_id, picked.id AS key_id
            FROM need JOIN picked USING (entitlement_id, rn)
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
        SELECT pairs.grant_id, k.id AS key_id, k.value, p.activations_limit, p.expires_in_days
        FROM pairs JOIN keys k ON k.id = pairs.key_id JOIN pools p ON p.id = k.pool_id
        "#,
    )
    .bind(&grants)
    .bind(&entitlements)
    .fetch_all(&mut **tx)
    .await?;
    Ok(reserved.into_iter().map(|r| (r.grant_id, r.key)).collect())
}

/// Takes the shared key lock of each entitlement until the transaction ends.
async fn lock_entitlements_shared(
    tx: &mut Transaction<'_, Postgres>,
    entitlements: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared($1, hashtext(e)) FROM unnest($2::text[]) AS e ORDER BY e",
    )
    .bind(KEY_LOCK_CLASS)
    .bind(entitlements)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Parks claimed jobs that found no key, giving back the attempt their claim counted.
async fn park_waiting_for_keys(
    tx: &mut Transaction<'_, Postgres>,
    grant_ids: &[String],
) -> Result<(), sqlx::Error> {
    if grant_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"
        UPDATE jobs SET state = 'waiting_for_keys', lease_token = NULL, run_at = now(),
                        attempts = attempts - 1, updated_at = now(),
                        last_error = 'no available key in the pool for entitlement ' || entitlement_id
        WHERE grant_id = ANY($1)
        "#,
    )
    .bind(grant_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts jobs waiting for keys of `entitlement_id` back in the queue and wakes workers on
/// commit. The caller holds the entitlement's key lock exclusively (see `lock_entitlement_keys`).
pub async fn resume_waiting_for_keys(
    tx: &mut Transaction<'_, Postgres>,
    entitlement_id: &str,
) -> Result<u64, sqlx::Error> {
    let resumed = sqlx::query(
        r#"
        UPDATE jobs SET state = 'queued', run_at = now(), updated_at = now(), last_error = NULL
        WHERE state = 'waiting_for_keys' AND entitlement_id = $1
        "#,
    )
    .bind(entitlement_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if resumed > 0 {
        notify_jobs_ready(&mut **tx).await?;
    }
    Ok(resumed)
}

/// Takes the entitlement's key lock exclusively until the transaction ends.
pub async fn lock_entitlement_keys(
    tx: &mut Transaction<'_, Postgres>,
    entitlement_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(KEY_LOCK_CLASS)
        .bind(entitlement_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sends the "job ready" notification (on commit, when inside a transaction).
pub async fn notify_jobs_ready<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(executor)
        .await?;
    Ok(())
}

/// What becomes of the job's key when an outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Stays reserved to the grant (retries send it again).
    Keep,
    /// Dodo holds it for this grant.
    Deliver,
    /// Never accepted: back to `available` for another grant.
    Release,
    /// Delivered, then the grant was revoked: never offered again.
    Revoke,
}

impl KeyAction {
    fn as_str(self) -> &'static str {
        match self {
            KeyAction::Keep => "keep",
            KeyAction::Deliver => "deliver",
            KeyAction::Release => "release",
            KeyAction::Revoke => "revoke",
        }
    }
}

/// One call to Dodo's fulfill endpoint, as recorded in `attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub key_id: i64,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<i32>,
    pub outcome: &'static str,
    pub error: Option<String>,
}

/// The outcome of a claimed job, recorded only if the lease is still ours.
#[derive(Debug, Clone)]
pub struct Completion {
    pub grant_id: String,
    pub lease_token: i64,
    pub key_id: i64,
    pub state: JobState,
    pub run_at: DateTime<Utc>,
    pub key_action: KeyAction,
    pub error: Option<String>,
    pub http_status: Option<i32>,
    pub attempt: AttemptRecord,
}

/// Records many outcomes in one statement. An outcome whose lease token no longer matches (the
/// lease expired and another worker took the job) changes nothing but its attempt record.
/// Returns the grant ids whose outcome was applied.
pub async fn complete_batch(
    pool: &PgPool,
    batch: &[Completion],
) -> Result<Vec<String>, sqlx::Error> {
    // One lock order for every batch, so two completers cannot deadlock.
    let mut batch: Vec<&Completion> = batch.iter().collect();
    batch.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    let col = |f: fn(&Completion) -> String| batch.iter().map(|c| f(c)).collect::<Vec<_>>();
    let grant_ids = col(|c| c.grant_id.clone());
    let tokens: Vec<i64> = batch.iter().map(|c| c.lease_token).collect();
    let key_ids: Vec<i64> = batch.iter().map(|c| c.key_id).collect();
    let states: Vec<JobState> = batch.iter().map(|c| c.state).collect();
    let run_ats: Vec<DateTime<Utc>> = batch.iter().map(|c| c.run_at).collect();
    let errors: Vec<Option<String>> = batch.iter().map(|c| c.error.clone()).collect();
    let statuses: Vec<Option<i32>> = batch.iter().map(|c| c.http_status).collect();
    let actions = col(|c| c.key_action.as_str().to_string());
    let started: Vec<DateTime<Utc>> = batch.iter().map(|c| c.attempt.started_at).collect();
    let durations: Vec<i32> = batch
        .iter()
        .map(|c| c.attempt.duration.as_millis().min(i32::MAX as u128) as i32)
        .collect();
    let attempt_statuses: Vec<Option<i32>> = batch.iter().map(|c| c.attempt.http_status).collect();
    let outcomes = col(|c| c.attempt.outcome.to_string());
    let attempt_errors: Vec<Option<String>> =
        batch.iter().map(|c| c.attempt.error.clone()).collect();
    sqlx::query_scalar(
        r#"
        WITH o AS (
            SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::job_state[],
                                 $5::timestamptz[], $6::text[], $7::int4[], $8::text[])
                AS o(grant_id, lease_token, key_id, state, run_at, last_error, http_status, key_action)
        ), j AS (
            UPDATE jobs SET state = o.state,
                            run_at = o.run_at,
                            lease_token = NULL,
                            last_error = o.last_error,
                            last_http_status = o.http_status,
                            key_id = CASE WHEN o.key_action = 'release' THEN NULL ELSE jobs.key_id END,
                            finished_at = CASE WHEN o.state IN ('delivered', 'failed', 'cancelled')
                                               THEN now() END,
                            updated_at = now()
            FROM o
            WHERE jobs.grant_id = o.grant_id AND jobs.lease_token = o.lease_token
              AND jobs.state = 'running'
            RETURNING jobs.grant_id
        ), k AS (
            UPDATE keys SET state = CASE o.key_action
                                        WHEN 'deliver' THEN 'delivered'::key_state
                                        WHEN 'release' THEN 'available'::key_state
                                        ELSE 'revoked'::key_state END,
                            grant_id = CASE WHEN o.key_action = 'release' THEN NULL
                                            ELSE keys.grant_id END,
                            updated_at = now()
            FROM o JOIN j ON j.grant_id = o.grant_id
            WHERE keys.id = o.key_id AND keys.grant_id = o.grant_id AND o.key_action <> 'keep'
        ), audited AS (
            INSERT INTO audit_log (actor, action, grant_id, key_id, detail)
            SELECT 'worker', o.key_action, o.grant_id, o.key_id, 'job ' || o.state::text
            FROM o JOIN j ON j.grant_id = o.grant_id
            WHERE o.key_action <> 'keep'
        ), a AS (
            INSERT INTO attempts (grant_id, key_id, started_at, duration_ms, http_status, outcome, error)
            SELECT * FROM unnest($1::text[], $3::int8[], $9::timestamptz[], $10::int4[],
                                 $11::int4[], $12::text[], $13::text[])
        )
        SELECT grant_id FROM j
        "#,
    )
    .bind(&grant_ids)
    .bind(&tokens)
    .bind(&key_ids)
    .bind(&states)
    .bind(&run_ats)
    .bind(&errors)
    .bind(&statuses)
    .bind(&actions)
    .bind(&started)
    .bind(&durations)
    .bind(&attempt_statuses)
    .bind(&outcomes)
    .bind(&attempt_errors)
    .fetch_all(pool)
    .await
}

/// The answer to "our key already exists at Dodo".
#[derive(Debug)]
pub enum NextKey {
    /// Try again at once with this key.
    Reserved(ReservedKey),
    /// The pool is empty: the job now waits for keys.
    Parked,
    /// Another worker owns the job now; stop.
    LeaseLost,
}

/// Marks the job's key `rejected` (never offered again), records the attempt, and reserves the
/// next key for the same grant — or parks the job if the pool is empty. Fenced by the lease.
pub async fn reject_key_and_reserve_next(
    pool: &PgPool,
    job: &ClaimedJob,
    attempt: &AttemptRecord,
) -> Result<NextKey, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let owned = sqlx::query(
        r#"
        UPDATE jobs SET key_id = NULL, updated_at = now()
        WHERE grant_id = $1 AND lease_token = $2 AND state = 'running' AND key_id = $3
        "#,
    )
    .bind(&job.grant_id)
    .bind(job.lease_token)
    .bind(job.key.key_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    insert_attempt(&mut tx, &job.grant_id, attempt).await?;
    if owned == 0 {
        tx.commit().await?;
        return Ok(NextKey::LeaseLost);
    }
    sqlx::query(
        "UPDATE keys SET state = 'rejected', updated_at = now() WHERE id = $1 AND grant_id = $2",
    )
    .bind(job.key.key_id)
    .bind(&job.grant_id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        Actor::Worker,
        "reject",
        Subject {
            grant_id: Some(&job.grant_id),
            key_id: Some(job.key.key_id),
            detail: Some("Dodo already has this key value"),
            ..Default::default()
        },
    )
    .await?;
    lock_entitlements_shared(&mut tx, &[job.entitlement_id.as_str()]).await?;
    let wanted = [(job.grant_id.clone(), job.entitlement_id.clone())];
    let next = match reserve_keys(&mut tx, &wanted).await?.pop() {
        Some((_, key)) => NextKey::Reserved(key),
        None => {
            park_waiting_for_keys(&mut tx, std::slice::from_ref(&job.grant_id)).await?;
            NextKey::Parked
        }
    };
    tx.commit().await?;
    Ok(next)
}

async fn insert_attempt(
    tx: &mut Transaction<'_, Postgres>,
    grant_id: &str,
    attempt: &AttemptRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        INSERT INTO attempts (grant_id, key_id, started_at, duration_ms, http_status, outcome, error)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        "#,
    )
    .bind(grant_id)
    .bind(attempt.key_id)
    .bind(attempt.started_at)
    .bind(attempt.duration.as_millis().min(i32::MAX as u128) as i32)
    .bind(attempt.http_status)
    .bind(attempt.outcome)
    .bind(&attempt.error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
