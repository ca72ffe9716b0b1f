//! keyrelay's vocabulary: Dodo's ids and key values as types checked once at the boundary, the
//! states of jobs and keys (Postgres enums), and who acts on them.

mod ids;
mod key;
mod outcome;
mod text;

use serde::{Deserialize, Serialize};

pub use ids::{
    CustomerId, EntitlementId, GrantId, Id, IdError, IdKind, MAX_ID_LEN, PaymentId, SubscriptionId,
};
pub use key::{KeyError, LicenseKey, MAX_KEY_LEN, mask_key};
pub use outcome::{AttemptOutcome, KeyAction, Serve};
pub use text::{printable, unsafe_in_id};

/// Where a fulfillment job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Retrying,
    WaitingForKeys,
    Delivered,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::WaitingForKeys,
        JobState::Delivered,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::WaitingForKeys => "waiting_for_keys",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Delivered | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Cli,
    Webhook,
    Worker,
    Admin,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Webhook => "webhook",
            Actor::Worker => "worker",
            Actor::Admin => "admin",
        }
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "key_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Available,
    Reserved,
    Delivered,
    /// Delivered, then revoked for a reason that can reverse: it does not count until Dodo
    /// shows the grant delivered again.
    Suspended,
    Rejected,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Available => "available",
            KeyState::Reserved => "reserved",
            KeyState::Delivered => "delivered",
            KeyState::Suspended => "suspended",
            KeyState::Rejected => "rejected",
            KeyState::Revoked => "revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("done"), None);
    }
}
