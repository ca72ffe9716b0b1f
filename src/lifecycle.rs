//! Grant lifecycle rules, as a pure function: how an `entitlement_grant.delivered`, `.failed` or
//! `.revoked` event changes a grant's job and key. Every applied event records the grant's
//! `updated_at`; an event that is not newer is stale and changes nothing, so any arrival order
//! ends in the same state. The store applies what `settle` decides.

use chrono::{DateTime, Utc};

use crate::domain::{JobState, KeyAction, KeyState};

pub const DELIVERED: &str = "entitlement_grant.delivered";
pub const FAILED: &str = "entitlement_grant.failed";
pub const REVOKED: &str = "entitlement_grant.revoked";

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
    {
        return Settlement::Stale;
    }
    let ours = facts.carries_our_key;
    let reserved = job.key == Some(KeyState::Reserved);
    let reason = facts.reason.as_deref().unwrap_or("no reason given");
    let (next, key, note) = match facts.event {
        GrantEvent::Delivered if job.state == JobState::Delivered => {
            (None, deliver_if(ours && reserved), "delivered".to_string())
        }
        GrantEvent::Delivered if job.state == JobState::Cancelled => {
            (None, KeyAction::Keep, "delivered after cancel".into())
        }
        GrantEvent::Delivered if ours => (
            Some(JobState::Delivered),
            KeyAction::Deliver,
            "delivered with our key".into(),
        ),
        GrantEvent::Delivered => (
            Some(JobState::Delivered),
            if reserved {
                KeyAction::Release
            } else {
                KeyAction::Keep
            },
            "delivered elsewhere with another key".into(),
        ),
        GrantEvent::Failed if job.state.is_finished() => (
            None,
            KeyAction::Keep,
            "failed at Dodo after the job ended".into(),
        ),
        GrantEvent::Failed => (
            Some(JobState::Failed),
            KeyAction::Keep,
            format!("Dodo reports the grant failed: {reason}"),
        ),
        GrantEvent::Revoked => (
            (job.state != JobState::Cancelled).then_some(JobState::Cancelled),
            if job.key == Some(KeyState::Delivered) || (ours && reserved) {
                KeyAction::Revoke
            } else if reserved {
                KeyAction::Release
            } else {
                KeyAction::Keep
            },
            format!("revoked at Dodo ({reason})"),
        ),
    };
    Settlement::Apply {
        job: next,
        key,
        note,
    }
}

fn deliver_if(yes: bool) -> KeyAction {
    if yes {
        KeyAction::Deliver
    } else {
        KeyAction::Keep
    }
}

#[cfg(test)]
mod tests;
