//! The event store as operators use it: list and show stored webhooks, and replay one through
//! the same entry point intake uses (idempotent).

use crate::db::Db;

use crate::crypto::Vault;
use crate::domain::Actor;
use crate::intake::event::IncomingEvent;
use crate::intake::payload_keys;
use crate::intake::record::{self, Recording};
use crate::store::{Recipients, read};

pub use crate::intake::record::ReplayOutcome;
pub use crate::store::read::{EventDetail, EventSummary, list_events};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no stored event with webhook-id {0}; see `keyrelay events list`")]
    NotFound(String),
    #[error("stored event {0} is not a webhook envelope: {1}")]
    Unparsable(String, String),
    #[error("the license key stored in event {0} cannot be read: {1}")]
    Unreadable(String, crate::crypto::OpenError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One stored event with its payload.
pub async fn show_event(db: &Db, webhook_id: &str) -> Result<Option<EventDetail>, sqlx::Error> {
    read::event(db, webhook_id).await
}

/// Re-runs intake on a stored event. Idempotent: a job that exists is not touched, and a
/// lifecycle event already applied is stale.
pub async fn replay(
    db: &Db,
    vault: &Vault,
    webhook_id: &str,
    actor: Actor,
    to: &Recipients,
) -> Result<ReplayOutcome, ReplayError> {
    let stored = read::event_payload(db, webhook_id)
        .await?
        .ok_or_else(|| ReplayError::NotFound(webhook_id.to_string()))?;
    let payload = payload_keys::open(&stored, vault, webhook_id)
        .map_err(|e| ReplayError::Unreadable(webhook_id.to_string(), e))?;
    let event = IncomingEvent::from_parts(webhook_id, payload.as_bytes())
        .map_err(|e| ReplayError::Unparsable(webhook_id.to_string(), e.to_string()))?;
    let outcome = record::record(db, vault, &event, Recording::Replayed(actor), to).await?;
    Ok(outcome.replayed())
}
