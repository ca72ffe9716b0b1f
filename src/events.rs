//! The event store: listing and showing stored webhooks, replaying one through intake
//! (idempotent), and pruning old events and finished jobs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::audit::{self, Actor, Subject};
use crate::fulfillment::storage::notify_jobs_ready;
use crate::intake::event::{IncomingEvent, JobDecision};
use crate::intake::lifecycle::{self, LifecycleOutcome};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventSummary {
    pub webhook_id: String,
    pub event_type: String,
    pub grant_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Newest first, optionally of one type or for one grant.
pub async fn list_events(
    pool: &PgPool,
    event_type: Option<&str>,
    grant_id: Option<&str>,
    limit: i64,
) -> Result<Vec<EventSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT webhook_id, event_type, grant_id, received_at FROM events \
         WHERE ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR grant_id = $2) \
         ORDER BY received_at DESC, webhook_id LIMIT $3",
    )
    .bind(event_type)
    .bind(grant_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub payload: serde_json::Value,
}

pub async fn show_event(
    pool: &PgPool,
    webhook_id: &str,
) -> Result<Option<EventDetail>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        summary: EventSummary,
        payload: serde_json::Value,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT webhook_id, event_type, grant_id, received_at, payload FROM events WHERE webhook_id = $1",
    )
    .bind(webhook_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| EventDetail {
        summary: r.summary,
        payload: r.payload,
    }))
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// A job was created for the grant.
    Queued,
    /// A lifecycle event changed the job or its key.
    Applied,
    /// Everything it asks for was already decided.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no stored event with webhook-id {0}; see `keyrelay events list`")]
    NotFound(String),
    #[error("stored event {0} is not a webhook envelope: {1}")]
    Unparsable(String, String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Re-runs intake on a stored event. Idempotent: a job that exists is not touched, and a
/// lifecycle event already applied is stale.
pub async fn replay(
    pool: &PgPool,
    webhook_id: &str,
    actor: Actor,
) -> Result<ReplayOutcome, ReplayError> {
    let payload: Option<String> =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_optional(pool)
            .await?;
    let payload = payload.ok_or_else(|| ReplayError::NotFound(webhook_id.to_string()))?;
    let event = IncomingEvent::from_parts(webhook_id, payload.as_bytes())
        .map_err(|e| ReplayError::Unparsable(webhook_id.to_string(), e.to_string()))?;
    let mut tx = pool.begin().await?;
    let outcome = match (&event.grant, event.job_decision()) {
        (Some(grant), decision) if decision != JobDecision::Skip => {
            let created = sqlx::query(
                r#"
                INSERT INTO jobs (grant_id, entitlement_id, customer_id, webhook_id, source, grant_updated_at)
                SELECT $1, $2, $3, $4, 'webhook', $5
                WHERE $6 OR EXISTS (SELECT 1 FROM pools WHERE entitlement_id = $2)
                ON CONFLICT (grant_id) DO NOTHING
                "#,
            )
            .bind(&grant.id)
            .bind(&grant.entitlement_id)
            .bind(&grant.customer_id)
            .bind(webhook_id)
            .bind(lifecycle::parse_time(grant.updated_at.as_deref()))
            .bind(decision == JobDecision::Enqueue)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if created == 1 {
                notify_jobs_ready(&mut *tx).await?;
                ReplayOutcome::Queued
            } else {
                ReplayOutcome::Unchanged
            }
        }
        (Some(grant), _) if lifecycle::is_lifecycle(&event.event_type) => {
            match lifecycle::apply(
                &mut tx,
                &event.event_type,
                grant,
                event.timestamp.as_deref(),
                actor,
            )
            .await?
            {
                LifecycleOutcome::Applied => ReplayOutcome::Applied,
                _ => ReplayOutcome::Unchanged,
            }
        }
        _ => ReplayOutcome::Unchanged,
    };
    let detail = format!("replayed {webhook_id}: {outcome:?}");
    let grant_id = event.grant.as_ref().map(|g| g.id.as_str());
    audit::record(
        &mut *tx,
        actor,
        "replay",
        Subject {
            grant_id,
            detail: Some(&detail),
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Rows deleted per statement while pruning, so pruning never holds long locks.
const PRUNE_BATCH: i64 = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub jobs: u64,
}

/// Deletes events and finished jobs (with their attempts) older than `older_than`, in small
/// batches. Keys, pools and the audit trail are kept.
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<Pruned, sqlx::Error> {
    let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
    let mut pruned = Pruned::default();
    loop {
        let n = sqlx::query(
            "DELETE FROM events WHERE webhook_id IN \
             (SELECT webhook_id FROM events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        pruned.events += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE grant_id IN \
             (SELECT grant_id FROM jobs WHERE finished_at < $1 \
              AND state IN ('delivered', 'failed', 'cancelled') LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        pruned.jobs += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(pruned)
}
