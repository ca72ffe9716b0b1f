//! The SQL of intake: one statement stores the event and, when asked, its job.

use sqlx::PgPool;

use super::event::{IncomingEvent, JobDecision};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// false: this webhook-id was already stored (a redelivery).
    pub new_event: bool,
    /// true: a job was created for the grant.
    pub job_created: bool,
}

/// Stores the event and, if `decision` asks, a queued job for its grant — atomically, in one
/// statement (one round trip, one commit). A known webhook-id or grant adds nothing.
pub async fn store_event(
    pool: &PgPool,
    event: &IncomingEvent<'_>,
    decision: JobDecision,
) -> Result<Stored, sqlx::Error> {
    let grant = event.grant.as_ref();
    let (stored, queued): (i64, i64) = sqlx::query_as(
        r#"
        WITH ev AS (
            INSERT INTO events (webhook_id, event_type, grant_id, payload)
            VALUES ($1, $2, $3, $4::jsonb)
            ON CONFLICT (webhook_id) DO NOTHING
            RETURNING webhook_id
        ), job AS (
            INSERT INTO jobs (grant_id, entitlement_id, customer_id, webhook_id, source, grant_updated_at)
            SELECT $3, $5, $6, $1, 'webhook', $9 FROM ev
            WHERE $7 AND ($8 OR EXISTS (SELECT 1 FROM pools WHERE entitlement_id = $5))
            ON CONFLICT (grant_id) DO NOTHING
            RETURNING grant_id
        )
        SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM job)
        "#,
    )
    .bind(event.webhook_id)
    .bind(&event.event_type)
    .bind(grant.map(|g| g.id.as_str()))
    .bind(event.payload)
    .bind(grant.map(|g| g.entitlement_id.as_str()))
    .bind(grant.map(|g| g.customer_id.as_str()))
    .bind(decision != JobDecision::Skip)
    .bind(decision == JobDecision::Enqueue)
    .bind(grant.and_then(|g| super::lifecycle::parse_time(g.updated_at.as_deref())))
    .fetch_one(pool)
    .await?;
    Ok(Stored {
        new_event: stored > 0,
        job_created: queued > 0,
    })
}
