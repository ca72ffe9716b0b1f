//! Recording a verified event: the one entry point for webhooks as they arrive and for replays
//! of stored ones. A `created` event and its job are stored in one statement; a lifecycle event
//! is stored and applied (as `lifecycle::settle` decides) in one transaction.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};

use super::event::{GrantFacts, IncomingEvent};
use super::payload_keys;
use crate::crypto::Vault;
use crate::domain::{Actor, JobState};
use crate::lifecycle::{self, EventFacts, GrantEvent, JobNow, Meaning, Settlement};
use crate::store::Recipients;
use crate::store::audit::{self, Subject};
use crate::store::enqueue::{self, NewEvent};
use crate::store::settle::{self as settle_store, EventSettlement};

/// How the event came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// As a webhook: a webhook-id already stored is a redelivery and changes nothing.
    Received,
    /// Replayed by an operator from the event store: everything it asks for is re-applied,
    /// which changes nothing already decided.
    Replayed(Actor),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// false: the webhook-id was already stored.
    pub new_event: bool,
    /// A job was created for the grant.
    pub job_created: bool,
    /// A lifecycle event changed the grant's job or key.
    pub settled: bool,
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

impl Recording {
    /// Who the audit trail names for what this recording changes.
    fn actor(self) -> Actor {
        match self {
            Recording::Received => Actor::Webhook,
            Recording::Replayed(actor) => actor,
        }
    }
}

impl From<enqueue::Recorded> for Outcome {
    fn from(recorded: enqueue::Recorded) -> Outcome {
        Outcome {
            new_event: recorded.new_event,
            job_created: recorded.job_created,
            settled: false,
        }
    }
}

impl Outcome {
    pub fn replayed(self) -> ReplayOutcome {
        if self.job_created {
            ReplayOutcome::Queued
        } else if self.settled {
            ReplayOutcome::Applied
        } else {
            ReplayOutcome::Unchanged
        }
    }
}

/// Stores the event and does what it asks, atomically. Never answer a webhook 2xx unless this
/// returned `Ok`.
pub async fn record(
    db: &Db,
    vault: &Vault,
    event: &IncomingEvent<'_>,
    how: Recording,
    to: &Recipients,
) -> Result<Outcome, sqlx::Error> {
    let (payload, key_sealed_with) = payload_keys::seal(&event.payload, vault, event.webhook_id);
    let row = NewEvent {
        webhook_id: event.webhook_id,
        event_type: &event.event_type,
        grant_id: event.grant.as_ref().map(|g| &g.id),
        payload: &payload,
        key_sealed_with,
    };
    let lifecycle_event = GrantEvent::from_type(&event.event_type);
    if let (Some(grant), Some(kind)) = (&event.grant, lifecycle_event) {
        let mut tx = db.begin().await?;
        let new_event = enqueue::insert_event(&mut *tx, row, None).await?;
        let settled = match how {
            Recording::Received if !new_event => false,
            _ => {
                apply(
                    &mut tx,
                    vault,
                    kind,
                    grant,
                    event.timestamp,
                    how.actor(),
                    to,
                )
                .await?
            }
        };
        let outcome = Outcome {
            new_event,
            job_created: false,
            settled,
        };
        audit_replay(&mut tx, event, how, outcome).await?;
        tx.commit().await?;
        return Ok(outcome);
    }
    if how == Recording::Received {
        // One statement, one round trip: the fast path of every `created` webhook.
        let recorded = enqueue::record_event(db, row, event.new_job(), false).await?;
        return Ok(Outcome::from(recorded));
    }
    let mut tx = db.begin().await?;
    let recorded = enqueue::record_event(&mut *tx, row, event.new_job(), true).await?;
    if recorded.job_created {
        crate::store::notify_jobs_ready(&mut *tx).await?;
    }
    let outcome = Outcome::from(recorded);
    audit_replay(&mut tx, event, how, outcome).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Applies what Dodo shows of a grant when asked (the reconciler's look-up of suspended
/// grants) as the lifecycle event its status names, in its own transaction; true if anything
/// changed. A status that names no such event changes nothing.
pub async fn apply_observed(
    db: &Db,
    vault: &Vault,
    grant: &GrantFacts,
    to: &Recipients,
) -> Result<bool, sqlx::Error> {
    let kind = match grant.status {
        crate::dodo::GrantStatus::Delivered => GrantEvent::Delivered,
        crate::dodo::GrantStatus::Revoked => GrantEvent::Revoked,
        _ => return Ok(false),
    };
    let mut tx = db.begin().await?;
    let changed = apply(&mut tx, vault, kind, grant, None, Actor::Worker, to).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Applies a lifecycle event to the grant's job and key; true if anything changed.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    kind: GrantEvent,
    grant: &GrantFacts,
    event_time: Option<DateTime<Utc>>,
    actor: Actor,
    to: &Recipients,
) -> Result<bool, sqlx::Error> {
    let job = settle_store::lock_job_for_event(tx, &grant.id).await?;
    let facts = EventFacts {
        event: kind,
        at: grant.updated_at.or(event_time),
        carries_our_key: job
            .as_ref()
            .and_then(|j| j.key_hash.as_ref())
            .is_some_and(|ours| grant.carries(vault, ours)),
        reason: grant.reason(kind),
    };
    let now = job.as_ref().map(|j| JobNow {
        state: j.state,
        key: j.key_state,
        seen: j.grant_updated_at,
        superseded: j.superseded,
    });
    let settlement = lifecycle::settle(now.as_ref(), &facts);
    let applied = match &settlement {
        Settlement::Stale => false,
        Settlement::Apply {
            job: next,
            key,
            note,
        } => {
            let key_id = job.as_ref().and_then(|j| j.key_id);
            let change = EventSettlement {
                at: facts.at,
                job_state: *next,
                key_action: *key,
                note,
                reason: facts.reason.as_deref(),
            };
            settle_store::settle_by_event(tx, &grant.id, key_id, change, actor, to).await?;
            true
        }
        Settlement::Unseen { state, note } => {
            let recorded =
                enqueue::record_unseen_grant(tx, grant.as_new_job(), *state, note, actor).await?;
            if recorded && *state == JobState::Delivered {
                crate::store::supersede(tx, std::slice::from_ref(&grant.id), actor, to).await?;
            }
            recorded
        }
    };
    if kind == GrantEvent::Revoked && lifecycle::meaning(facts.reason.as_deref()) == Meaning::Review
    {
        metrics::counter!("keyrelay_unknown_revocation_reasons_total").increment(1);
        tracing::warn!(grant_id = %grant.id, reason = ?facts.reason, "a revocation reason keyrelay does not know: treated as a revoke; review the grant");
    }
    tracing::info!(grant_id = %grant.id, event_type = kind.as_type(), applied, ?settlement, "lifecycle event");
    Ok(applied)
}

/// Audits a replay (nothing, for a webhook as it arrives).
async fn audit_replay(
    tx: &mut Transaction<'_, Postgres>,
    event: &IncomingEvent<'_>,
    how: Recording,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    let Recording::Replayed(actor) = how else {
        return Ok(());
    };
    let detail = format!("replayed {}: {:?}", event.webhook_id, outcome.replayed());
    let subject = Subject {
        grant_id: event.grant.as_ref().map(|g| &g.id),
        detail: Some(&detail),
        ..Default::default()
    };
    audit::record(&mut **tx, actor, "replay", subject).await
}
