//! Jobs whose pool's source is asked over the network (`http` pools), before they have a
//! key: claimed for the ask step, then bound to the key the source answered (`bind`, and
//! queued for Dodo), or retried or failed. Every key an endpoint answers is recorded in
//! `received_keys`; one that is not bound is an orphan.

use std::time::Duration;

use crate::db::Db;
use chrono::{DateTime, Utc};

use super::bind::{NewBinding, bind_new_keys};
use super::outbox::{ENDED, Recipients, failure_notices};
use super::{DUE, LEASE_FENCE, TAKE_LEASE, moved};
use crate::crypto::Vault;
use crate::domain::{CustomerId, EntitlementId, GrantId, JobState, LicenseKey};
use crate::jobs::JobEvent;
use crate::sources::{GrantFacts, PoolRecipe};

/// A job whose source is asked for its key, owned until its lease ends.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeylessJob {
    pub grant_id: GrantId,
    pub entitlement_id: EntitlementId,
    pub customer_id: CustomerId,
    pub lease_token: i64,
    pub attempts: i32,
    /// Keys of this grant Dodo already held: each one asks the endpoint anew.
    pub rejected: i64,
    pub payment_id: Option<String>,
    pub subscription_id: Option<String>,
    /// When this worker claimed it: the attempt it records starts here.
    pub claimed_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub recipe: PoolRecipe,
}

impl KeylessJob {
    /// What its source is told of the grant.
    pub fn facts(&self) -> GrantFacts<'_> {
        GrantFacts {
            grant_id: &self.grant_id,
            customer_id: &self.customer_id,
            entitlement_id: &self.entitlement_id,
            payment_id: self.payment_id.as_deref(),
            subscription_id: self.subscription_id.as_deref(),
            rejected: self.rejected,
            now: Utc::now(),
        }
    }

    /// The pool's name, for messages.
    pub fn pool(&self) -> &str {
        &self.recipe.pool
    }

    /// The name of the pool's key source.
    pub fn endpoint(&self) -> &str {
        self.recipe.endpoint.as_deref().unwrap_or_default()
    }
}

/// Claims up to `limit` due jobs of http pools that have no key yet, counting the attempt and
/// setting a lease.
pub async fn claim_keyless(
    db: &Db,
    limit: usize,
    lease: Duration,
) -> Result<Vec<KeylessJob>, sqlx::Error> {
    sqlx::query_as(&claim_keyless_statement())
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .fetch_all(db)
        .await
}

/// The statement `claim_keyless` runs (`$1` the limit, `$2` the lease in seconds). Workers run
/// it whenever they have room, so where no pool is asked it reads no jobs at all: it does not
/// rely on the planner starting from the few pools rather than from every due job.
pub fn claim_keyless_statement() -> String {
    format!(
        r#"
        WITH due AS (
            SELECT jobs.grant_id FROM jobs
            JOIN pools ON pools.entitlement_id = jobs.entitlement_id AND pools.source = 'http'
            WHERE {DUE} AND jobs.key_id IS NULL
              AND EXISTS (SELECT 1 FROM pools WHERE pools.source = 'http')
            ORDER BY jobs.run_at
            LIMIT $1
            FOR UPDATE OF jobs SKIP LOCKED
        ), claimed AS (
            UPDATE jobs SET {TAKE_LEASE}
            FROM due WHERE jobs.grant_id = due.grant_id
            RETURNING jobs.grant_id, jobs.entitlement_id, jobs.customer_id, jobs.lease_token,
                      jobs.attempts, jobs.webhook_id
        )
        SELECT claimed.grant_id, claimed.entitlement_id, claimed.customer_id,
               claimed.lease_token, claimed.attempts, pools.id AS pool_id, pools.name AS pool,
               pools.source, pools.template, pools.alphabet, pools.activations_limit,
               pools.expires_in_days, pools.endpoint,
               (SELECT count(*) FROM keys
                WHERE keys.grant_id = claimed.grant_id AND keys.state = 'rejected') AS rejected,
               events.payload -> 'data' ->> 'payment_id' AS payment_id,
               events.payload -> 'data' ->> 'subscription_id' AS subscription_id,
               now() AS claimed_at
        FROM claimed
        JOIN pools ON pools.entitlement_id = claimed.entitlement_id
        LEFT JOIN events ON events.webhook_id = claimed.webhook_id
        "#
    )
}

/// What became of a key an endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Bound to the grant; the job is queued for Dodo.
    Bound,
    /// Another worker owns the job now: the key is recorded as an orphan.
    LeaseLost,
    /// The value is already stored (for another grant or pool): recorded as an orphan, and
    /// the job failed with the reason.
    Duplicate,
}

/// Records `key` as answered for the job's grant under `idempotency_key`, and binds it to the
/// grant (reserved, audited, sealed) if the job is still this worker's and the value is new;
/// the job then goes back to the queue without using an attempt.
pub async fn record_received(
    db: &Db,
    vault: &Vault,
    job: &KeylessJob,
    idempotency_key: &str,
    key: &LicenseKey,
    to: &Recipients,
) -> Result<Received, sqlx::Error> {
    let mut tx = db.begin().await?;
    let owned = sqlx::query(&format!(
        "SELECT 1 FROM jobs WHERE {LEASE_FENCE} AND key_id IS NULL FOR UPDATE"
    ))
    .bind(&job.grant_id)
    .bind(job.lease_token)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    let mut bound = false;
    if owned {
        let new = NewBinding::made(&job.grant_id, &job.recipe, key.clone());
        bound = !bind_new_keys(&mut tx, vault, &[&new]).await?.is_empty();
    }
    let outcome = match (owned, bound) {
        (false, _) => Received::LeaseLost,
        (true, true) => Received::Bound,
        (true, false) => Received::Duplicate,
    };
    sqlx::query(
        "INSERT INTO received_keys (grant_id, idempotency_key, value_hash, masked, bound, orphan) \
         VALUES ($1, $2, $3, $4, $5, NOT $5)",
    )
    .bind(&job.grant_id)
    .bind(idempotency_key)
    .bind(vault.hash(key.reveal()))
    .bind(key.masked())
    .bind(bound)
    .execute(&mut *tx)
    .await?;
    match outcome {
        Received::Bound => {
            // Bound: the claim takes it to Dodo, with the attempt this claim counted given back.
            sqlx::query(&format!(
                "UPDATE jobs SET state = $3, lease_token = NULL, run_at = now(), \
                                 attempts = attempts - 1, last_error = NULL, updated_at = now() \
                 WHERE {LEASE_FENCE}"
            ))
            .bind(&job.grant_id)
            .bind(job.lease_token)
            .bind(moved(JobState::Running, JobEvent::Handoff))
            .execute(&mut *tx)
            .await?;
            super::notify_jobs_ready(&mut *tx).await?;
        }
        Received::Duplicate => {
            let error = format!(
                "the endpoint of pool `{}` answered a key that is already stored (for another grant or pool); revoke it at the vendor and retry the job",
                job.pool()
            );
            settle_keyless(
                &mut *tx,
                job,
                JobState::Failed,
                Utc::now(),
                false,
                &error,
                to,
            )
            .await?;
        }
        Received::LeaseLost => {}
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Sets a keyless job aside under its lease: `retrying` at `run_at` or `failed`, with the
/// reason, and records the attempt (outcome `no_key`: Dodo was not called); `refund` gives
/// back the attempt (the endpoint asked us to slow down).
pub async fn settle_keyless<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    job: &KeylessJob,
    state: JobState,
    run_at: DateTime<Utc>,
    refund: bool,
    error: &str,
    to: &Recipients,
) -> Result<bool, sqlx::Error> {
    let event = match state {
        JobState::Failed => JobEvent::Fail,
        _ => JobEvent::RetryLater,
    };
    let ended = sqlx::query(&format!(
        r#"
        WITH ended AS (
            UPDATE jobs SET state = $3, run_at = $4, lease_token = NULL, last_error = $6,
                            attempts = attempts - CASE WHEN $5 THEN 1 ELSE 0 END,
                            finished_at = CASE WHEN $3 = 'failed'::job_state THEN now() END,
                            updated_at = now()
            WHERE {LEASE_FENCE}
            RETURNING {ENDED}
        ), noticed AS (
            {notices}
        )
        INSERT INTO attempts (grant_id, started_at, duration_ms, outcome, error)
        SELECT grant_id, $7, greatest(0, extract(epoch FROM clock_timestamp() - $7) * 1000)::int,
               'no_key', $6
        FROM ended
        "#,
        notices = failure_notices("$8"),
    ))
    .bind(&job.grant_id)
    .bind(job.lease_token)
    .bind(moved(JobState::Running, event))
    .bind(run_at)
    .bind(refund)
    .bind(error)
    .bind(job.claimed_at)
    .bind(to.shop)
    .execute(executor)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// One key an endpoint answered for a grant, as operators see it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ReceivedKey {
    pub masked: String,
    pub idempotency_key: String,
    pub received_at: DateTime<Utc>,
    pub bound: bool,
    /// Issued by the endpoint but given to no grant: revoke it at the vendor.
    pub orphan: bool,
}

/// Grants with a key an endpoint issued that no grant uses, newest first.
pub async fn grants_with_orphan_keys(db: &Db, limit: i64) -> Result<Vec<GrantId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT grant_id FROM received_keys WHERE orphan \
         GROUP BY grant_id ORDER BY max(received_at) DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many grants have a key an endpoint issued that no grant uses.
pub async fn count_grants_with_orphan_keys(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(DISTINCT grant_id) FROM received_keys WHERE orphan")
        .fetch_one(db)
        .await
}

/// Every key endpoints answered for the grant, oldest first.
pub async fn received_keys(db: &Db, grant_id: &GrantId) -> Result<Vec<ReceivedKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT masked, idempotency_key, received_at, bound, orphan FROM received_keys \
         WHERE grant_id = $1 ORDER BY id",
    )
    .bind(grant_id)
    .fetch_all(db)
    .await
}
