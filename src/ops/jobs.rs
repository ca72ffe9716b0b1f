//! Jobs as operators see them: list, show with attempts and audit trail, retry (replay) and
//! cancel. Keys are shown masked unless the operator asks for them.

use crate::db::Db;
use serde::Serialize;

use crate::crypto::Vault;
use crate::domain::{Actor, GrantId, JobState, KeyState};
use crate::store::asking::{self, ReceivedKey};
use crate::store::audit::{self, AuditEntry};
use crate::store::sealed::open_key;
use crate::store::search::{self, JobFilter};
use crate::store::{self, operator, read};

pub use crate::store::ActionResult;
pub use crate::store::read::{JobSummary, failed_grant_ids};

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub started_at: chrono::DateTime<chrono::Utc>,
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
    /// Keys an endpoint answered for the grant (`http` pools); an orphan needs revoking at
    /// the vendor.
    pub received_keys: Vec<ReceivedKey>,
    /// What the grant's changes owed its key's vendor and the shop, and whether it was sent.
    pub notices: Vec<crate::store::outbox::Notice>,
}

/// One job with its key (masked unless `reveal_key`; `(sealed)` without `vault`), every
/// attempt and its audit trail.
pub async fn show_job(
    db: &Db,
    vault: Option<&Vault>,
    grant_id: &GrantId,
    reveal_key: bool,
) -> Result<Option<JobDetail>, sqlx::Error> {
    let Some(job) = read::job(db, grant_id).await? else {
        return Ok(None);
    };
    let show = |key_id: i64, sealed: &[u8]| {
        let Some(vault) = vault else {
            return "(sealed)".to_string();
        };
        match open_key(vault, key_id, sealed) {
            Ok(k) if reveal_key => k.reveal().to_string(),
            Ok(k) => k.masked(),
            Err(e) => format!("(unreadable: {e})"),
        }
    };
    let key = read::live_key(db, grant_id).await?;
    let attempt_history = read::attempts(db, grant_id)
        .await?
        .into_iter()
        .map(|a| AttemptView {
            started_at: a.started_at,
            http_status: a.http_status,
            outcome: a.outcome,
            error: a.error,
            duration_ms: a.duration_ms,
            key: a
                .key_id
                .zip(a.key_sealed)
                .map(|(id, sealed)| show(id, &sealed)),
        })
        .collect();
    Ok(Some(JobDetail {
        audit: audit::for_grant(db, grant_id).await?,
        received_keys: asking::received_keys(db, grant_id).await?,
        notices: crate::store::outbox::for_grant(db, grant_id).await?,
        job,
        key_state: key.as_ref().map(|k| k.2),
        key: key.map(|(id, sealed, _)| show(id, &sealed)),
        attempt_history,
    }))
}

/// Replays failed or cancelled jobs: back to `queued` with a fresh attempt budget.
pub async fn retry_jobs(
    db: &Db,
    grant_ids: &[GrantId],
    actor: Actor,
) -> Result<Vec<(GrantId, ActionResult)>, sqlx::Error> {
    let results = each(grant_ids, async |id| {
        operator::requeue_job(db, id, actor).await
    })
    .await?;
    if results.iter().any(|(_, r)| *r == ActionResult::Done) {
        store::notify_jobs_ready(db).await?;
    }
    Ok(results)
}

/// Stops trying jobs; see `store::operator::cancel_job` for what happens to their keys.
pub async fn cancel_jobs(
    db: &Db,
    grant_ids: &[GrantId],
    actor: Actor,
) -> Result<Vec<(GrantId, ActionResult)>, sqlx::Error> {
    each(grant_ids, async |id| {
        operator::cancel_job(db, id, actor).await
    })
    .await
}

/// Runs `action` on each job in turn (each in its own transaction), pairing ids and results.
async fn each(
    grant_ids: &[GrantId],
    action: impl AsyncFn(&GrantId) -> Result<ActionResult, sqlx::Error>,
) -> Result<Vec<(GrantId, ActionResult)>, sqlx::Error> {
    let mut results = Vec::with_capacity(grant_ids.len());
    for grant_id in grant_ids {
        results.push((grant_id.clone(), action(grant_id).await?));
    }
    Ok(results)
}

/// A change to every job matching a filter (the dashboard's bulk actions, `jobs bulk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkAction {
    /// Failed or cancelled jobs go back to `queued` with a fresh attempt budget.
    Retry,
    /// Queued, retrying, waiting and failed jobs stop; keys Dodo cannot hold go back to the pool.
    Cancel,
}

/// Jobs one bulk action changes at most; run it again for the rest.
pub const BULK_MAX: i64 = 10_000;

impl BulkAction {
    pub fn parse(raw: &str) -> Option<BulkAction> {
        match raw {
            "retry" => Some(BulkAction::Retry),
            "cancel" => Some(BulkAction::Cancel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Cancel => "cancel",
        }
    }

    /// The states it applies to.
    pub fn states(self) -> &'static [JobState] {
        match self {
            BulkAction::Retry => &[JobState::Failed, JobState::Cancelled],
            BulkAction::Cancel => &[
                JobState::Queued,
                JobState::Retrying,
                JobState::WaitingForKeys,
                JobState::Failed,
            ],
        }
    }

    /// Those states in words.
    pub fn applies_to(self) -> &'static str {
        match self {
            BulkAction::Retry => "failed or cancelled",
            BulkAction::Cancel => "queued, retrying, waiting or failed",
        }
    }
}

/// How many jobs `action` would change.
pub async fn bulk_count(
    db: &Db,
    action: BulkAction,
    filter: &JobFilter,
) -> Result<i64, sqlx::Error> {
    search::count_jobs(db, filter, action.states()).await
}

/// What a bulk run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkRun {
    /// Changed this many jobs.
    Changed(u64),
    /// More jobs match now than the person confirmed: nothing was changed.
    MoreThanConfirmed { matching: i64, confirmed: i64 },
}

/// Applies `action` to the oldest jobs that match `filter` now, at most `confirmed` (what the
/// person was shown and said yes to) and `BULK_MAX` (a job that changed state meanwhile is
/// skipped). If more match now than were confirmed, nothing changes: the person looks again.
/// Each job's audit trail records it, and the action itself is one `bulk_retry`/`bulk_cancel`
/// entry with the filter.
pub async fn bulk(
    db: &Db,
    action: BulkAction,
    filter: &JobFilter,
    confirmed: i64,
    actor: Actor,
) -> Result<BulkRun, sqlx::Error> {
    let matching = bulk_count(db, action, filter).await?;
    if matching > confirmed {
        tracing::warn!(action = action.as_str(), matching, confirmed, filter = %filter.describe(), "bulk action refused: more jobs match than were confirmed");
        return Ok(BulkRun::MoreThanConfirmed {
            matching,
            confirmed,
        });
    }
    let limit = confirmed.clamp(0, BULK_MAX);
    let grants = search::matching_grants(db, filter, action.states(), limit).await?;
    let mut done = 0;
    for chunk in grants.chunks(500) {
        let results = match action {
            BulkAction::Retry => retry_jobs(db, chunk, actor).await?,
            BulkAction::Cancel => cancel_jobs(db, chunk, actor).await?,
        };
        done += results
            .iter()
            .filter(|(_, r)| matches!(r, ActionResult::Done | ActionResult::DoneKeyKept))
            .count() as u64;
    }
    let detail = format!("{done} jobs matching {}", filter.describe());
    audit::record(
        db,
        actor,
        &format!("bulk_{}", action.as_str()),
        audit::Subject {
            detail: Some(&detail),
            ..audit::Subject::default()
        },
    )
    .await?;
    tracing::info!(action = action.as_str(), jobs = done, filter = %filter.describe(), actor = actor.as_str(), "bulk action");
    Ok(BulkRun::Changed(done))
}
