//! What operators do to jobs, from the CLI or the dashboard: replay a failed or cancelled job,
//! or stop trying one. Each change is audited with its actor.

use crate::db::Db;
use serde::Serialize;

use super::audit::{self, Subject};
use super::key_changes::{KeyChange, change_keys};
use super::outbox::Recipients;
use crate::domain::{Actor, GrantId, JobState, KeyAction};
use crate::jobs::{JobEvent, next};

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

/// Puts a failed or cancelled job back in the queue with a fresh attempt budget, audited. Any
/// other state is left alone and reported. The caller wakes the workers (`notify_jobs_ready`).
pub async fn requeue_job(
    db: &Db,
    grant_id: &GrantId,
    actor: Actor,
) -> Result<ActionResult, sqlx::Error> {
    let mut tx = db.begin().await?;
    let state: Option<JobState> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE grant_id = $1 FOR UPDATE")
            .bind(grant_id)
            .fetch_optional(&mut *tx)
            .await?;
    let result = match state.map(|s| (s, next(s, JobEvent::OperatorRetry))) {
        None => ActionResult::NotFound,
        Some((_, Some(queued))) => {
            sqlx::query(
                r#"
                UPDATE jobs SET state = $2, attempts = 0, run_at = now(), finished_at = NULL,
                                updated_at = now()
                WHERE grant_id = $1
                "#,
            )
            .bind(grant_id)
            .bind(queued)
            .execute(&mut *tx)
            .await?;
            let subject = Subject {
                grant_id: Some(grant_id),
                ..Default::default()
            };
            audit::record(&mut *tx, actor, "retry", subject).await?;
            ActionResult::Done
        }
        Some((state, None)) => ActionResult::WrongState { state },
    };
    tx.commit().await?;
    Ok(result)
}

/// Stops trying a job. Its reserved key goes back to the pool only if Dodo cannot have accepted
/// it: no attempt with that key ended without a clear answer (timeout, 5xx). A running job
/// cannot be cancelled until its current attempt ends.
pub async fn cancel_job(
    db: &Db,
    grant_id: &GrantId,
    actor: Actor,
) -> Result<ActionResult, sqlx::Error> {
    let mut tx = db.begin().await?;
    let row: Option<(JobState, Option<i64>, bool)> = sqlx::query_as(
        r#"
        SELECT state, key_id,
               EXISTS (SELECT 1 FROM attempts
                       WHERE attempts.grant_id = jobs.grant_id AND attempts.key_id = jobs.key_id
                         AND (http_status IS NULL OR http_status >= 500)) AS unclear
        FROM jobs WHERE grant_id = $1 FOR UPDATE
        "#,
    )
    .bind(grant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let result =
        match row.map(|(s, key, unclear)| (s, next(s, JobEvent::OperatorCancel), key, unclear)) {
            None => ActionResult::NotFound,
            Some((state, None, ..)) => ActionResult::WrongState { state },
            Some((_, Some(cancelled), key_id, unclear)) => {
                sqlx::query(
                    r#"
                UPDATE jobs SET state = $2, finished_at = now(), updated_at = now(),
                                last_error = 'cancelled by an operator'
                WHERE grant_id = $1
                "#,
                )
                .bind(grant_id)
                .bind(cancelled)
                .execute(&mut *tx)
                .await?;
                let subject = Subject {
                    grant_id: Some(grant_id),
                    key_id,
                    ..Default::default()
                };
                audit::record(&mut *tx, actor, "cancel", subject).await?;
                match key_id {
                    Some(key_id) if !unclear => {
                        let release = KeyChange {
                            key_id,
                            grant_id,
                            action: KeyAction::Release,
                            detail: "cancelled by an operator",
                            reason: None,
                        };
                        change_keys(&mut tx, &[release], actor, &Recipients::default()).await?;
                        ActionResult::Done
                    }
                    Some(_) => ActionResult::DoneKeyKept,
                    None => ActionResult::Done,
                }
            }
        };
    tx.commit().await?;
    Ok(result)
}
