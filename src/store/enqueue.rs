//! How events and jobs come into being: a webhook and its job in one statement, a grant found by
//! polling Dodo, a lifecycle event for a grant never seen. One rule decides which grants are
//! served, written once (`serves`).

use crate::db::Db;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::domain::{
    Actor, CustomerId, EntitlementId, GrantId, JobState, PaymentId, Serve, SubscriptionId,
};

/// A verified webhook, as stored.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub grant_id: Option<&'a GrantId>,
    /// The body as received (valid JSON), license keys in it sealed.
    pub payload: &'a str,
    /// The encryption key that sealed the license keys in the payload, if it holds any.
    pub key_sealed_with: Option<i32>,
}

/// The job a `created` event asks for.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub grant_id: &'a GrantId,
    pub entitlement_id: &'a EntitlementId,
    pub customer_id: &'a CustomerId,
    pub payment_id: Option<&'a PaymentId>,
    pub subscription_id: Option<&'a SubscriptionId>,
    pub grant_created_at: Option<DateTime<Utc>>,
    pub grant_updated_at: Option<DateTime<Utc>>,
    pub serve: Serve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// false: this webhook-id was already stored (a redelivery, or a replay).
    pub new_event: bool,
    /// true: a job was created for the grant.
    pub job_created: bool,
}

fn serve_name(serve: Serve) -> &'static str {
    match serve {
        Serve::Yes => "yes",
        Serve::IfPooled => "if_pooled",
        Serve::No => "no",
    }
}

/// The one rule for which grants keyrelay serves, as SQL: `serve` is a parameter holding
/// `serve_name(...)`, `entitlement` the grant's entitlement.
fn serves(serve: &str, entitlement: &str) -> String {
    format!(
        "({serve} = 'yes' OR ({serve} = 'if_pooled' \
          AND EXISTS (SELECT 1 FROM pools WHERE entitlement_id = {entitlement})))"
    )
}

/// Stores the event and, when `job` asks and the grant is served, a queued job for it —
/// atomically, in one statement (one round trip, one commit). A known webhook-id adds nothing,
/// unless `replay`: then the job is created if it is missing. A known grant adds nothing.
pub async fn record_event<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: NewEvent<'_>,
    job: Option<NewJob<'_>>,
    replay: bool,
) -> Result<Recorded, sqlx::Error> {
    let sql = format!(
        r#"
        WITH ev AS (
            INSERT INTO events (webhook_id, event_type, grant_id, payload, key_sealed_with)
            VALUES ($1, $2, $3, $4::jsonb, $10)
            ON CONFLICT (webhook_id) DO NOTHING
            RETURNING webhook_id
        ), job AS (
            INSERT INTO jobs (grant_id, entitlement_id, customer_id, webhook_id, source,
                              grant_updated_at, payment_id, subscription_id, grant_created_at)
            SELECT $3, $5, $6, $1, 'webhook', $7, $11, $12, $13
            WHERE $5::text IS NOT NULL AND ($9 OR EXISTS (SELECT 1 FROM ev)) AND {}
            ON CONFLICT (grant_id) DO NOTHING
            RETURNING grant_id
        )
        SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM job)
        "#,
        serves("$8", "$5")
    );
    let (stored, queued): (i64, i64) = sqlx::query_as(&sql)
        .bind(event.webhook_id)
        .bind(event.event_type)
        .bind(event.grant_id)
        .bind(event.payload)
        .bind(job.map(|j| j.entitlement_id))
        .bind(job.map(|j| j.customer_id))
        .bind(job.and_then(|j| j.grant_updated_at))
        .bind(serve_name(job.map_or(Serve::No, |j| j.serve)))
        .bind(replay)
        .bind(event.key_sealed_with)
        .bind(job.and_then(|j| j.payment_id))
        .bind(job.and_then(|j| j.subscription_id))
        .bind(job.and_then(|j| j.grant_created_at))
        .fetch_one(executor)
        .await?;
    Ok(Recorded {
        new_event: stored > 0,
        job_created: queued > 0,
    })
}

/// Stores an event's row on its own, with the reason when keyrelay cannot process it (it then
/// creates no job); false when its webhook-id is already stored.
pub async fn insert_event<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: NewEvent<'_>,
    problem: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO events (webhook_id, event_type, grant_id, payload, problem, key_sealed_with) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(event.webhook_id)
    .bind(event.event_type)
    .bind(event.grant_id)
    .bind(event.payload)
    .bind(problem)
    .bind(event.key_sealed_with)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records the end state of a served grant that has no job (its lifecycle event came before
/// `created`, or `created` never came), so a late `created` adds nothing. False when the grant
/// is not served or already has a job.
pub async fn record_unseen_grant(
    tx: &mut Transaction<'_, Postgres>,
    job: NewJob<'_>,
    state: JobState,
    note: &str,
    actor: Actor,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        r#"
        WITH job AS (
            INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, finished_at,
                              grant_updated_at, last_error, source, payment_id,
                              subscription_id, grant_created_at)
            SELECT $1, $2, $3, $4, now(), $5, $6, 'webhook', $9, $10, $11
            WHERE {}
            ON CONFLICT (grant_id) DO NOTHING
            RETURNING grant_id
        )
        INSERT INTO audit_log (actor, action, grant_id, detail)
        SELECT $8, 'settle', grant_id, 'job ' || $4::text || ': ' || $6 FROM job
        "#,
        serves("$7", "$2")
    );
    let inserted = sqlx::query(&sql)
        .bind(job.grant_id)
        .bind(job.entitlement_id)
        .bind(job.customer_id)
        .bind(state)
        .bind(job.grant_updated_at)
        .bind(note)
        .bind(serve_name(job.serve))
        .bind(actor.as_str())
        .bind(job.payment_id)
        .bind(job.subscription_id)
        .bind(job.grant_created_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

/// Queues grants of one entitlement that keyrelay has no job for (source `reconciler` or
/// `bench`), audited with `detail`; returns the grants queued. Known grants are untouched.
pub async fn enqueue_grants(
    db: &Db,
    entitlement_id: &EntitlementId,
    grants: &[(GrantId, CustomerId, Option<PaymentId>)],
    source: &str,
    detail: &str,
) -> Result<Vec<GrantId>, sqlx::Error> {
    let ids: Vec<&GrantId> = grants.iter().map(|g| &g.0).collect();
    let customers: Vec<&CustomerId> = grants.iter().map(|g| &g.1).collect();
    let payments: Vec<Option<&PaymentId>> = grants.iter().map(|g| g.2.as_ref()).collect();
    sqlx::query_scalar(
        r#"
        WITH new AS (
            INSERT INTO jobs (grant_id, entitlement_id, customer_id, source, payment_id)
            SELECT found.grant_id, $3, found.customer_id, $4, found.payment_id
            FROM unnest($1::text[], $2::text[], $6::text[])
                AS found(grant_id, customer_id, payment_id)
            ON CONFLICT (grant_id) DO NOTHING
            RETURNING grant_id
        ), audited AS (
            INSERT INTO audit_log (actor, action, grant_id, detail)
            SELECT 'worker', 'enqueue', grant_id, $5 FROM new
        )
        SELECT grant_id FROM new
        "#,
    )
    .bind(&ids)
    .bind(&customers)
    .bind(entitlement_id)
    .bind(source)
    .bind(detail)
    .bind(&payments)
    .fetch_all(db)
    .await
}

/// Adds `count` delivered jobs of `entitlement_id` as history, for measuring claims over a
/// large table (benchmark only: these grants never existed).
pub async fn insert_history_for_benchmark(
    db: &Db,
    entitlement_id: &EntitlementId,
    count: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, attempts, finished_at, source) \
         SELECT 'grant_hist_' || i, $1, 'cus_hist', 'delivered', 1, now(), 'bench_history' \
         FROM generate_series(1, $2) i",
    )
    .bind(entitlement_id)
    .bind(count as i64)
    .execute(db)
    .await?;
    Ok(())
}
