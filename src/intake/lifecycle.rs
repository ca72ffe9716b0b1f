//! Grant lifecycle events: `entitlement_grant.delivered`, `.failed` and `.revoked` settle the
//! job and its key. Each applied event records the grant's `updated_at`; an event that is not
//! newer is stale and changes nothing, so any arrival order ends in the same state.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::event::{IncomingEvent, JobDecision, ownership};
use super::storage::Stored;
use crate::audit::{self, Actor, Subject};
use crate::dodo::Grant;
use crate::domain::{JobState, KeyState};

pub const DELIVERED: &str = "entitlement_grant.delivered";
pub const FAILED: &str = "entitlement_grant.failed";
pub const REVOKED: &str = "entitlement_grant.revoked";

pub fn is_lifecycle(event_type: &str) -> bool {
    [DELIVERED, FAILED, REVOKED].contains(&event_type)
}

/// What a lifecycle event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOutcome {
    Applied,
    /// Not newer than what was already applied.
    Stale,
    /// Not a license-key grant keyrelay serves.
    NotOurs,
}

/// Stores the event and applies it in one transaction; a known webhook-id changes nothing.
pub async fn store_and_apply(
    pool: &PgPool,
    event: &IncomingEvent<'_>,
    grant: &Grant,
) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let new_event = sqlx::query(
        "INSERT INTO events (webhook_id, event_type, grant_id, payload) VALUES ($1, $2, $3, $4::jsonb) \
         ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(event.webhook_id)
    .bind(&event.event_type)
    .bind(&grant.id)
    .bind(event.payload)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new_event {
        let outcome = apply(
            &mut tx,
            &event.event_type,
            grant,
            event.timestamp.as_deref(),
            Actor::Webhook,
        )
        .await?;
        tracing::info!(grant_id = %grant.id, event_type = %event.event_type, ?outcome, "lifecycle event");
    }
    tx.commit().await?;
    Ok(Stored {
        new_event,
        job_created: false,
    })
}

#[derive(sqlx::FromRow)]
struct Current {
    state: JobState,
    key_id: Option<i64>,
    grant_updated_at: Option<DateTime<Utc>>,
    key_value: Option<String>,
    key_state: Option<KeyState>,
}

/// An ISO 8601 time from a payload, if it parses.
pub fn parse_time(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Applies one lifecycle event to the grant's job and key, inside `tx`.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    event_type: &str,
    grant: &Grant,
    event_timestamp: Option<&str>,
    actor: Actor,
) -> Result<LifecycleOutcome, sqlx::Error> {
    let at = parse_time(grant.updated_at.as_deref()).or_else(|| parse_time(event_timestamp));
    let current: Option<Current> = sqlx::query_as(
        r#"
        SELECT j.state, j.key_id, j.grant_updated_at, k.value AS key_value, k.state AS key_state
        FROM jobs j LEFT JOIN keys k ON k.id = j.key_id
        WHERE j.grant_id = $1 FOR UPDATE OF j
        "#,
    )
    .bind(&grant.id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(current) = current else {
        return record_unseen_grant(tx, event_type, grant, at, actor).await;
    };
    if let (Some(seen), Some(at)) = (current.grant_updated_at, at)
        && at <= seen
    {
        return Ok(LifecycleOutcome::Stale);
    }
    let carries_ours =
        current.key_value.is_some() && grant.key_value() == current.key_value.as_deref();
    let reserved = current.key_state == Some(KeyState::Reserved);
    let (job_state, key_change, note): (Option<JobState>, Option<KeyState>, String) =
        match event_type {
            DELIVERED if current.state == JobState::Delivered => (
                None,
                (carries_ours && reserved).then_some(KeyState::Delivered),
                "delivered".into(),
            ),
            DELIVERED if current.state == JobState::Cancelled => {
                (None, None, "delivered after cancel".into())
            }
            DELIVERED if carries_ours => (
                Some(JobState::Delivered),
                Some(KeyState::Delivered),
                "delivered with our key".into(),
            ),
            DELIVERED => (
                Some(JobState::Delivered),
                reserved.then_some(KeyState::Available),
                "delivered elsewhere with another key".into(),
            ),
            FAILED if current.state.is_finished() => {
                (None, None, "failed at Dodo after the job ended".into())
            }
            FAILED => (
                Some(JobState::Failed),
                None,
                format!(
                    "Dodo reports the grant failed: {}",
                    grant
                        .error_message
                        .as_deref()
                        .or(grant.error_code.as_deref())
                        .unwrap_or("no reason given")
                ),
            ),
            _ => (
                (current.state != JobState::Cancelled).then_some(JobState::Cancelled),
                if current.key_state == Some(KeyState::Delivered) || (carries_ours && reserved) {
                    Some(KeyState::Revoked)
                } else if reserved {
                    Some(KeyState::Available)
                } else {
                    None
                },
                format!(
                    "revoked at Dodo ({})",
                    grant
                        .revocation_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            ),
        };
    let release = key_change == Some(KeyState::Available);
    sqlx::query(
        r#"
        UPDATE jobs SET grant_updated_at = $2,
                        state = coalesce($3, state),
                        lease_token = CASE WHEN $3 IS NULL THEN lease_token END,
                        finished_at = CASE WHEN $3 IS NULL THEN finished_at ELSE now() END,
                        last_error = CASE WHEN $3 IS NULL THEN last_error ELSE $4 END,
                        key_id = CASE WHEN $5 THEN NULL ELSE key_id END,
                        updated_at = now()
        WHERE grant_id = $1
        "#,
    )
    .bind(&grant.id)
    .bind(at)
    .bind(job_state)
    .bind(&note)
    .bind(release)
    .execute(&mut **tx)
    .await?;
    if let (Some(new_key_state), Some(key_id)) = (key_change, current.key_id) {
        sqlx::query(
            "UPDATE keys SET state = $2, grant_id = CASE WHEN $2 = 'available'::key_state THEN NULL ELSE grant_id END, \
             updated_at = now() WHERE id = $1",
        )
        .bind(key_id)
        .bind(new_key_state)
        .execute(&mut **tx)
        .await?;
        let action = match new_key_state {
            KeyState::Delivered => "deliver",
            KeyState::Available => "release",
            _ => "revoke",
        };
        let subject = Subject {
            grant_id: Some(&grant.id),
            key_id: Some(key_id),
            detail: Some(&note),
            ..Default::default()
        };
        audit::record(&mut **tx, actor, action, subject).await?;
    }
    if let Some(state) = job_state {
        record_settled(tx, actor, &grant.id, &format!("job {state}: {note}")).await?;
    }
    Ok(LifecycleOutcome::Applied)
}

/// A lifecycle event for a grant without a job (it came before `created`, or `created` never
/// came): record the grant's end state, so a late `created` adds nothing.
async fn record_unseen_grant(
    tx: &mut Transaction<'_, Postgres>,
    event_type: &str,
    grant: &Grant,
    at: Option<DateTime<Utc>>,
    actor: Actor,
) -> Result<LifecycleOutcome, sqlx::Error> {
    let decision = ownership(grant);
    let state = match event_type {
        DELIVERED => JobState::Delivered,
        FAILED => JobState::Failed,
        _ => JobState::Cancelled,
    };
    let inserted = sqlx::query(
        r#"
        INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, finished_at, grant_updated_at,
                          last_error, source)
        SELECT $1, $2, $3, $4, now(), $5, $6, 'webhook'
        WHERE $7 AND ($8 OR EXISTS (SELECT 1 FROM pools WHERE entitlement_id = $2))
        ON CONFLICT (grant_id) DO NOTHING
        "#,
    )
    .bind(&grant.id)
    .bind(&grant.entitlement_id)
    .bind(&grant.customer_id)
    .bind(state)
    .bind(at)
    .bind(format!("{event_type} arrived before entitlement_grant.created"))
    .bind(decision != JobDecision::Skip)
    .bind(decision == JobDecision::Enqueue)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(LifecycleOutcome::NotOurs);
    }
    record_settled(
        tx,
        actor,
        &grant.id,
        &format!("job {state}: {event_type} before created"),
    )
    .await?;
    Ok(LifecycleOutcome::Applied)
}

/// Audits a job settled by a lifecycle event.
async fn record_settled(
    tx: &mut Transaction<'_, Postgres>,
    actor: Actor,
    grant_id: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let subject = Subject {
        grant_id: Some(grant_id),
        detail: Some(detail),
        ..Default::default()
    };
    audit::record(&mut **tx, actor, "settle", subject).await
}
