//! What people look at: jobs, their attempts and keys, stored events, and the figures the demo
//! and the benchmark report. Nothing here writes.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{CustomerId, EntitlementId, GrantId, JobState, KeyState};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobSummary {
    pub grant_id: GrantId,
    pub state: JobState,
    pub attempts: i32,
    pub entitlement_id: EntitlementId,
    pub customer_id: CustomerId,
    pub payment_id: Option<String>,
    pub last_error: Option<String>,
    pub last_http_status: Option<i32>,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
}

pub(crate) const SUMMARY_COLUMNS: &str = "grant_id, state, attempts, entitlement_id, customer_id, payment_id, last_error, \
     last_http_status, source, created_at, updated_at, run_at";

/// One job.
pub async fn job(db: &Db, grant_id: &GrantId) -> Result<Option<JobSummary>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE grant_id = $1"
    ))
    .bind(grant_id)
    .fetch_optional(db)
    .await
}

/// The grant's live key (reserved, delivered, suspended or revoked), if it has one: id,
/// sealed value, state.
pub async fn live_key(
    db: &Db,
    grant_id: &GrantId,
) -> Result<Option<(i64, Vec<u8>, KeyState)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, value_sealed, state FROM keys \
         WHERE grant_id = $1 AND state NOT IN ('available', 'rejected')",
    )
    .bind(grant_id)
    .fetch_optional(db)
    .await
}

/// One recorded fulfill attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub started_at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub key_id: Option<i64>,
    /// The attempt's key, sealed as stored.
    pub key_sealed: Option<Vec<u8>>,
}

/// The grant's attempts, oldest first.
pub async fn attempts(db: &Db, grant_id: &GrantId) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT attempts.started_at, attempts.http_status, attempts.outcome, attempts.error,
               attempts.duration_ms, keys.id AS key_id, keys.value_sealed AS key_sealed
        FROM attempts LEFT JOIN keys ON keys.id = attempts.key_id
        WHERE attempts.grant_id = $1 ORDER BY attempts.id
        "#,
    )
    .bind(grant_id)
    .fetch_all(db)
    .await
}

/// Every failed job's grant id, oldest failure first.
pub async fn failed_grant_ids(db: &Db) -> Result<Vec<GrantId>, sqlx::Error> {
    sqlx::query_scalar("SELECT grant_id FROM jobs WHERE state = 'failed' ORDER BY updated_at")
        .fetch_all(db)
        .await
}

/// A grant as the shop's API shows it: the job, and the sealed key when it was delivered.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ShopGrant {
    pub grant_id: GrantId,
    pub customer_id: CustomerId,
    pub entitlement_id: EntitlementId,
    pub payment_id: Option<String>,
    pub state: JobState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub key_id: Option<i64>,
    pub key_sealed: Option<Vec<u8>>,
    pub key_state: Option<KeyState>,
}

/// Jobs with the key each delivered, suspended or not (on `keys_one_live_key_per_grant`).
const SHOP_GRANT: &str = "SELECT jobs.grant_id, jobs.customer_id, jobs.entitlement_id, jobs.payment_id, \
     jobs.state, jobs.created_at, jobs.updated_at, jobs.finished_at, \
     keys.id AS key_id, keys.value_sealed AS key_sealed, keys.state AS key_state \
     FROM jobs LEFT JOIN keys ON keys.grant_id = jobs.grant_id \
                            AND keys.state IN ('delivered', 'suspended')";

/// One grant for the shop.
pub async fn shop_grant(db: &Db, grant_id: &GrantId) -> Result<Option<ShopGrant>, sqlx::Error> {
    sqlx::query_as(&format!("{SHOP_GRANT} WHERE jobs.grant_id = $1"))
        .bind(grant_id)
        .fetch_optional(db)
        .await
}

/// A customer's grants, newest first, after `after` (created time and grant id).
pub async fn customer_grants(
    db: &Db,
    customer_id: &CustomerId,
    after: Option<(DateTime<Utc>, &GrantId)>,
    limit: i64,
) -> Result<Vec<ShopGrant>, sqlx::Error> {
    let (at, grant) = after.unzip();
    let page = match at {
        Some(_) => "AND jobs.created_at <= $3 AND (jobs.created_at, jobs.grant_id) < ($3, $4)",
        None => "AND $3::timestamptz IS NULL AND $4::text IS NULL",
    };
    sqlx::query_as(&format!(
        "{SHOP_GRANT} WHERE jobs.customer_id = $1 {page} \
         ORDER BY jobs.created_at DESC, jobs.grant_id DESC LIMIT $2"
    ))
    .bind(customer_id)
    .bind(limit)
    .bind(at)
    .bind(grant)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventSummary {
    pub webhook_id: String,
    pub event_type: String,
    pub grant_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Why keyrelay could not process it, if it could not.
    pub problem: Option<String>,
}

/// Stored events, newest first, optionally of one type or for one grant.
pub async fn list_events(
    db: &Db,
    event_type: Option<&str>,
    grant_id: Option<&str>,
    limit: i64,
) -> Result<Vec<EventSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT webhook_id, event_type, grant_id, received_at, problem FROM events \
         WHERE ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR grant_id = $2) \
         ORDER BY received_at DESC, webhook_id LIMIT $3",
    )
    .bind(event_type)
    .bind(grant_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Stored events received before `before` (a received time and webhook-id; all when None), newest first: the events page,
/// a page at a time on the `received_at` index.
pub async fn events_before(
    db: &Db,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<EventSummary>, sqlx::Error> {
    let (at, id) = before.unzip();
    let older = match at {
        Some(_) => "WHERE received_at <= $2 AND (received_at, webhook_id) < ($2, $3)",
        None => "WHERE $2::timestamptz IS NULL AND $3::text IS NULL",
    };
    sqlx::query_as(&format!(
        "SELECT webhook_id, event_type, grant_id, received_at, problem FROM events {older} \
         ORDER BY received_at DESC, webhook_id DESC LIMIT $1"
    ))
    .bind(limit)
    .bind(at)
    .bind(id)
    .fetch_all(db)
    .await
}

/// How many events keyrelay set aside (on the partial index `events_with_problem`).
pub async fn count_events_with_problem(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE problem IS NOT NULL")
        .fetch_one(db)
        .await
}

/// Events keyrelay set aside (it could not process them), newest first.
pub async fn events_with_problem(db: &Db, limit: i64) -> Result<Vec<EventSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT webhook_id, event_type, grant_id, received_at, problem FROM events \
         WHERE problem IS NOT NULL ORDER BY received_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub payload: serde_json::Value,
}

/// One stored event with its payload.
pub async fn event(db: &Db, webhook_id: &str) -> Result<Option<EventDetail>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        summary: EventSummary,
        payload: serde_json::Value,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT webhook_id, event_type, grant_id, received_at, problem, payload FROM events \
         WHERE webhook_id = $1",
    )
    .bind(webhook_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| EventDetail {
        summary: r.summary,
        payload: r.payload,
    }))
}

/// A stored event's body, as text.
pub async fn event_payload(db: &Db, webhook_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT payload::text FROM events WHERE webhook_id = $1")
        .bind(webhook_id)
        .fetch_optional(db)
        .await
}

/// How the demo's grants went: jobs that needed more than one attempt, and delivered jobs
/// whose own key is delivered.
pub async fn demo_figures(db: &Db) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT (SELECT count(*) FROM jobs WHERE attempts > 1),
               (SELECT count(*) FROM jobs JOIN keys ON keys.id = jobs.key_id
                WHERE jobs.state = 'delivered' AND keys.state = 'delivered')
        "#,
    )
    .fetch_one(db)
    .await
}

/// Jobs delivered since `since` that are not benchmark history, and the p50 and p99 of the
/// fulfill-call durations recorded since, in ms.
pub async fn bench_figures(db: &Db, since: DateTime<Utc>) -> Result<(i64, f64, f64), sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT (SELECT count(*) FROM jobs WHERE state = 'delivered' AND source <> 'bench_history'
                AND finished_at >= $1),
               coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0)::float8,
               coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms), 0)::float8
        FROM attempts WHERE started_at >= $1
        "#,
    )
    .bind(since)
    .fetch_one(db)
    .await
}

/// Grants revoked for a reason keyrelay does not know, for a human to review. Their own partial
/// index (`jobs_to_review`) holds exactly these, so however many refunds pile up a read takes
/// only them; the note is a literal here because it is one in the index's predicate.
pub const TO_REVIEW: &str = "state = 'cancelled' \
     AND last_error LIKE '%a reason keyrelay does not know, treated as a revoke; review it'";

/// Grants revoked for a reason keyrelay does not know, newest first, for a human to review.
pub async fn revocations_to_review(db: &Db, limit: i64) -> Result<Vec<GrantId>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT grant_id FROM jobs WHERE {TO_REVIEW} ORDER BY updated_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many grants were revoked for a reason keyrelay does not know.
pub async fn count_revocations_to_review(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {TO_REVIEW}"))
        .fetch_one(db)
        .await
}

/// Grants whose key is suspended, up to `limit`, in no fixed order (so repeated passes over a
/// long list reach all of it): the reconciler asks Dodo whether each came back.
pub async fn suspended_grants(
    db: &Db,
    limit: i64,
) -> Result<Vec<(GrantId, CustomerId, EntitlementId)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT jobs.grant_id, jobs.customer_id, jobs.entitlement_id \
         FROM keys JOIN jobs ON jobs.key_id = keys.id \
         WHERE keys.revocation_seq IS NOT NULL AND keys.state = 'suspended' \
         ORDER BY random() LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The keys of `sign` pools that no longer count (revoked or suspended), in the order they
/// changed, and the list's sequence number: the last change to any signed key's standing.
pub async fn signed_revocations(
    db: &Db,
) -> Result<(i64, Vec<crate::sources::revocations::Revoked>), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let sequence: Option<i64> = sqlx::query_scalar(
        "SELECT max(keys.revocation_seq) FROM keys \
         WHERE keys.pool_id IN (SELECT id FROM pools WHERE source = 'sign') \
           AND keys.revocation_seq IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    let revoked = sqlx::query_as(
        "SELECT keys.grant_id, \
                to_char(keys.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since, \
                keys.state::text AS state \
         FROM keys \
         WHERE keys.pool_id IN (SELECT id FROM pools WHERE source = 'sign') \
           AND keys.revocation_seq IS NOT NULL AND keys.state IN ('revoked', 'suspended') \
         ORDER BY keys.revocation_seq",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((sequence.unwrap_or(0), revoked))
}

#[cfg(test)]
mod tests {
    use super::TO_REVIEW;
    use crate::lifecycle::REVIEW_NOTE;

    /// The review list's statements and its partial index (`jobs_to_review`) name the note as a
    /// literal; a note changed here without them would find nothing to review.
    #[test]
    fn the_review_reads_name_the_note_as_written() {
        assert!(
            TO_REVIEW.ends_with(&format!("'%{}'", REVIEW_NOTE)),
            "{}",
            TO_REVIEW
        );
        let migration = include_str!("../../migrations/20261210000001_read_what_changed.sql");
        assert!(migration.contains(&format!("last_error LIKE '%{}'", REVIEW_NOTE)));
    }
}
