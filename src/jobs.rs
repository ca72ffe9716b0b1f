//! Jobs as operators see them: list, show with attempts, retry (replay) and cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::audit::{self, Actor, AuditEntry, Subject};
use crate::domain::{JobState, KeyState, mask_key};
use crate::fulfillment::storage::notify_jobs_ready;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobSummary {
    pub grant_id: String,
    pub state: JobState,
    pub attempts: i32,
    pub entitlement_id: String,
    pub customer_id: String,
    pub last_error: Option<String>,
    pub last_http_status: Option<i32>,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
}

const SUMMARY_COLUMNS: &str = "grant_id, state, attempts, entitlement_id, customer_id, last_error, \
     last_http_status, source, created_at, updated_at, run_at";

/// Newest first, optionally in one state.
pub async fn list_jobs(
    pool: &PgPool,
    state: Option<JobState>,
    limit: i64,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE ($1::job_state IS NULL OR state = $1) \
         ORDER BY created_at DESC, grant_id LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub started_at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// Masked unless asked for.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    pub key: Option<String>,
    pub key_state: Option<KeyState>,
    pub attempt_history: Vec<AttemptView>,
    pub audit: Vec<AuditEntry>,
}

/// One job with its key (masked unless `reveal_key`) and every attempt, oldest first.
pub async fn show_job(
    pool: &PgPool,
    grant_id: &str,
    reveal_key: bool,
) -> Result<Option<JobDetail>, sqlx::Error> {
    let job: Option<JobSummary> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE grant_id = $1"
    ))
    .bind(grant_id)
    .fetch_optional(pool)
    .await?;
    let Some(job) = job else { return Ok(None) };
    let key: Option<(String, KeyState)> = sqlx::query_as(
        r#"
        SELECT value, state FROM keys
        WHERE grant_id = $1 AND state IN ('reserved', 'delivered', 'revoked')
        "#,
    )
    .bind(grant_id)
    .fetch_optional(pool)
    .await?;
    let mut attempt_history: Vec<AttemptView> = sqlx::query_as(
        r#"
        SELECT a.started_at, a.http_status, a.outcome, a.error, a.duration_ms, k.value AS key
        FROM attempts a LEFT JOIN keys k ON k.id = a.key_id
        WHERE a.grant_id = $1 ORDER BY a.id
        "#,
    )
    .bind(grant_id)
    .fetch_all(pool)
    .await?;
    let show = |k: String| if reveal_key { k } else { mask_key(&k) };
    for a in &mut attempt_history {
        a.key = a.key.take().map(show);
    }
    let audit = audit::for_grant(pool, grant_id).await?;
    Ok(Some(JobDetail {
        audit,
        job,
        key_state: key.as_ref().map(|k| k.1),
        key: key.map(|k| show(k.0)),
        attempt_history,
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ActionResult {
    Done,
    /// Cancelled, but the key stays bound to the grant: Dodo may hold it.
    DoneKeyKept,
    NotFound,
    WrongState {
        state: JobState,
    },
}

/// Replays failed or cancelled jobs: back to `queued` with a fresh attempt budget.
pub async fn retry_jobs(
    pool: &PgPool,
    grant_ids: &[String],
    actor: Actor,
) -> Result<Vec<(String, ActionResult)>, sqlx::Error> {
    let mut results = Vec::new();
    for grant_id in grant_ids {
        let state: Option<JobState> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE grant_id = $1")
                .bind(grant_id)
                .fetch_optional(pool)
                .await?;
        let result = match state {
            None => ActionResult::NotFound,
            Some(JobState::Failed | JobState::Cancelled) => {
                let updated = sqlx::query(
                    r#"
                    UPDATE jobs SET state = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
                                    updated_at = now()
                    WHERE grant_id = $1 AND state IN ('failed', 'cancelled')
                    "#,
                )
                .bind(grant_id)
                .execute(pool)
                .await?
                .rows_affected();
                if updated == 1 {
                    let subject = Subject {
                        grant_id: Some(grant_id),
                        ..Default::default()
                    };
                    audit::record(pool, actor, "retry", subject).await?;
                    ActionResult::Done
                } else {
                    ActionResult::WrongState {
                        state: JobState::Running,
                    }
                }
            }
            Some(state) => ActionResult::WrongState { state },
        };
        results.push((grant_id.clone(), result));
    }
    if results.iter().any(|(_, r)| *r == ActionResult::Done) {
        notify_jobs_ready(pool).await?;
    }
    Ok(results)
}

/// Every failed job's grant id, oldest failure first.
pub async fn failed_grant_ids(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT grant_id FROM jobs WHERE state = 'failed' ORDER BY updated_at")
        .fetch_all(pool)
        .await
}

/// Stops trying a job. Its reserved key goes back to the pool only if Dodo cannot have accepted
/// it: no attempt with that key ended without a clear answer (timeout, 5xx). A running job
/// cannot be cancelled until its current attempt ends.
pub async fn cancel_jobs(
    pool: &PgPool,
    grant_ids: &[String],
    actor: Actor,
) -> Result<Vec<(String, ActionResult)>, sqlx::Error> {
    let mut results = Vec::new();
    for grant_id in grant_ids {
        let mut tx = pool.begin().await?;
        let row: Option<(JobState, Option<i64>)> =
            sqlx::query_as("SELECT state, key_id FROM jobs WHERE grant_id = $1 FOR UPDATE")
                .bind(grant_id)
                .fetch_optional(&mut *tx)
                .await?;
        let result = match row {
            None => ActionResult::NotFound,
            Some((state @ (JobState::Running | JobState::Delivered | JobState::Cancelled), _)) => {
                ActionResult::WrongState { state }
            }
            Some((_, key_id)) => {
                let ambiguous: bool = sqlx::query_scalar(
                    r#"
                    SELECT EXISTS (SELECT 1 FROM attempts WHERE grant_id = $1 AND key_id = $2
                                   AND (http_status IS NULL OR http_status >= 500))
                    "#,
                )
                .bind(grant_id)
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?;
                let release = key_id.is_some() && !ambiguous;
                sqlx::query(
                    r#"
                    UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
                                    key_id = CASE WHEN $2 THEN NULL ELSE key_id END,
                                    last_error = 'cancelled by an operator'
                    WHERE grant_id = $1
                    "#,
                )
                .bind(grant_id)
                .bind(release)
                .execute(&mut *tx)
                .await?;
                if release {
                    sqlx::query(
                        "UPDATE keys SET state = 'available', grant_id = NULL, updated_at = now() \
                         WHERE id = $1 AND state = 'reserved'",
                    )
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                }
                let subject = Subject {
                    grant_id: Some(grant_id),
                    key_id,
                    ..Default::default()
                };
                audit::record(&mut *tx, actor, "cancel", subject).await?;
                if release {
                    audit::record(&mut *tx, actor, "release", subject).await?;
                }
                if key_id.is_some() && !release {
                    ActionResult::DoneKeyKept
                } else {
                    ActionResult::Done
                }
            }
        };
        tx.commit().await?;
        results.push((grant_id.clone(), result));
    }
    Ok(results)
}

/// Job counts by state (every state present, zero when empty).
pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    let rows: Vec<(JobState, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
            .fetch_all(pool)
            .await?;
    Ok(JobState::ALL
        .into_iter()
        .map(|s| (s, rows.iter().find(|r| r.0 == s).map_or(0, |r| r.1)))
        .collect())
}
