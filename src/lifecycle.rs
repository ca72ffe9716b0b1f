//! Grant lifecycle rules, as a pure function: how an `entitlement_grant.delivered`, `.failed` or
//! `.revoked` event changes a grant's job and key. Every applied event records the grant's
//! `updated_at`; an event that is not newer is stale and changes nothing, so any arrival order
//! ends in the same state. The store applies what `settle` decides.
//!
//! A revocation revokes the key for good or suspends it, by its reason (`reasons`). A suspended
//! key is reinstated when Dodo shows the grant delivered again with it, and revoked once a
//! newer grant of the same subscription and entitlement is delivered (`superseded`).

use chrono::{DateTime, Utc};

pub mod reasons;
pub use reasons::{Meaning, meaning};

use crate::domain::{JobState, KeyAction, KeyState};

pub const DELIVERED: &str = "entitlement_grant.delivered";
pub const FAILED: &str = "entitlement_grant.failed";
pub const REVOKED: &str = "entitlement_grant.revoked";

/// How a job revoked for a reason keyrelay does not know ends its note, to be found for review.
pub const REVIEW_NOTE: &str = "a reason keyrelay does not know, treated as a revoke; review it";

/// Which lifecycle event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEvent {
    Delivered,
    Failed,
    Revoked,
}

impl GrantEvent {
    /// The lifecycle event an event type names, if it is one.
    pub fn from_type(event_type: &str) -> Option<GrantEvent> {
        match event_type {
            DELIVERED => Some(GrantEvent::Delivered),
            FAILED => Some(GrantEvent::Failed),
            REVOKED => Some(GrantEvent::Revoked),
            _ => None,
        }
    }

    pub fn as_type(self) -> &'static str {
        match self {
            GrantEvent::Delivered => DELIVERED,
            GrantEvent::Failed => FAILED,
            GrantEvent::Revoked => REVOKED,
        }
    }
}

/// What the event says about the grant.
#[derive(Debug, Clone)]
pub struct EventFacts {
    pub event: GrantEvent,
    /// The grant's `updated_at` (or the event's time when absent).
    pub at: Option<DateTime<Utc>>,
    /// The grant holds the key keyrelay bound to it.
    pub carries_our_key: bool,
    /// Dodo's reason, for failed and revoked grants.
    pub reason: Option<String>,
}

/// The job as the event finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobNow {
    pub state: JobState,
    /// The state of the key bound to the job, if any.
    pub key: Option<KeyState>,
    /// The grant's `updated_at` of the newest event applied.
    pub seen: Option<DateTime<Utc>>,
    /// A newer grant of the same subscription and entitlement has been delivered.
    pub superseded: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Not newer than what was applied: change nothing.
    Stale,
    /// Record the event's time; move the job (if `job`) and its key. `note` explains it.
    Apply {
        job: Option<JobState>,
        key: KeyAction,
        note: String,
    },
    /// No job yet: record the grant's end state, so a late `created` adds nothing.
    Unseen { state: JobState, note: String },
}

/// How `facts` changes `job`.
pub fn settle(job: Option<&JobNow>, facts: &EventFacts) -> Settlement {
    let Some(job) = job else {
        let state = match facts.event {
            GrantEvent::Delivered => JobState::Delivered,
            GrantEvent::Failed => JobState::Failed,
            GrantEvent::Revoked => JobState::Cancelled,
        };
        let note = format!(
            "{} arrived before entitlement_grant.created",
            facts.event.as_type()
        );
        return Settlement::Unseen { state, note };
    };
    if let (Some(seen), Some(at)) = (job.seen, facts.at)
        && at <= seen
        && !revokes_for_good(job, facts)
    {
        return Settlement::Stale;
    }
    let ours = facts.carries_our_key;
    let (next, key, note) = match facts.event {
        GrantEvent::Delivered => delivered(job, ours),
        GrantEvent::Failed if job.state.is_finished() => (
            None,
            KeyAction::Keep,
            "failed at Dodo after the job ended".into(),
        ),
        GrantEvent::Failed => (
            Some(JobState::Failed),
            KeyAction::Keep,
            format!(
                "Dodo reports the grant failed: {}",
                facts.reason.as_deref().unwrap_or("no reason given")
            ),
        ),
        GrantEvent::Revoked => revoked(job, ours, facts.reason.as_deref()),
    };
    Settlement::Apply {
        job: next,
        key,
        note,
    }
}

/// A revocation for good still to be applied: it wins over a delivery that looks newer, since
/// Dodo never delivers a grant again after such a revocation.
fn revokes_for_good(job: &JobNow, facts: &EventFacts) -> bool {
    let live = matches!(
        job.key,
        Some(KeyState::Reserved | KeyState::Delivered | KeyState::Suspended)
    );
    facts.event == GrantEvent::Revoked
        && meaning(facts.reason.as_deref()).is_final()
        && (job.state != JobState::Cancelled || live)
}

type Decision = (Option<JobState>, KeyAction, String);

fn delivered(job: &JobNow, ours: bool) -> Decision {
    let reserved = job.key == Some(KeyState::Reserved);
    match job.state {
        JobState::Delivered if job.key == Some(KeyState::Suspended) && ours && !job.superseded => (
            None,
            KeyAction::Reinstate,
            "delivered again: reinstated".into(),
        ),
        JobState::Delivered => (None, deliver_if(ours && reserved), "delivered".into()),
        JobState::Cancelled => (None, KeyAction::Keep, "delivered after cancel".into()),
        _ if ours => (
            Some(JobState::Delivered),
            KeyAction::Deliver,
            "delivered with our key".into(),
        ),
        _ => (
            Some(JobState::Delivered),
            if reserved {
                KeyAction::Release
            } else {
                KeyAction::Keep
            },
            "delivered elsewhere with another key".into(),
        ),
    }
}

fn revoked(job: &JobNow, ours: bool, reason: Option<&str>) -> Decision {
    let shown = reason.unwrap_or("no reason given");
    let held = match job.key {
        Some(KeyState::Delivered | KeyState::Suspended) => true,
        Some(KeyState::Reserved) => ours,
        _ => false,
    };
    let meaning = meaning(reason);
    if held && meaning == Meaning::Suspend && !job.superseded {
        let key = if job.key == Some(KeyState::Suspended) {
            KeyAction::Keep
        } else {
            KeyAction::Suspend
        };
        let next = (job.state != JobState::Delivered).then_some(JobState::Delivered);
        return (next, key, format!("suspended at Dodo ({shown})"));
    }
    let key = if held {
        KeyAction::Revoke
    } else if job.key == Some(KeyState::Reserved) {
        KeyAction::Release
    } else {
        KeyAction::Keep
    };
    let note = match meaning {
        Meaning::Review => format!("revoked at Dodo ({shown}): {REVIEW_NOTE}"),
        Meaning::Suspend if held => {
            format!("revoked at Dodo ({shown}): a newer grant of the subscription was delivered")
        }
        _ => format!("revoked at Dodo ({shown})"),
    };
    let next = (job.state != JobState::Cancelled).then_some(JobState::Cancelled);
    (next, key, note)
}

fn deliver_if(yes: bool) -> KeyAction {
    if yes {
        KeyAction::Deliver
    } else {
        KeyAction::Keep
    }
}

#[cfg(test)]
mod revocation_tests;
#[cfg(test)]
mod tests;
