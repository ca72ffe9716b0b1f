//! What can be decided about a grant: whether keyrelay serves it, what becomes of its key, and
//! how one fulfill attempt ended. Decisions name these; the store records them.

use serde::Serialize;

/// Whether keyrelay serves a grant, by its integration type alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// A license-key grant.
    Yes,
    /// The payload does not say (older payloads): serve it when a pool serves its entitlement.
    IfPooled,
    /// Another integration.
    No,
}

/// What becomes of a grant's key when an outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Stays bound to the grant (retries send it again).
    Keep,
    /// Dodo holds it for this grant.
    Deliver,
    /// Never accepted: back to `available` for another grant.
    Release,
    /// Dodo already holds this value for someone else: never offered again.
    Reject,
    /// Delivered, then the grant was revoked for a reason that can reverse.
    Suspend,
    /// Suspended, and Dodo shows the grant delivered again.
    Reinstate,
    /// Delivered, then the grant was revoked: never offered again.
    Revoke,
}

impl KeyAction {
    /// The name the audit trail records.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAction::Keep => "keep",
            KeyAction::Deliver => "deliver",
            KeyAction::Release => "release",
            KeyAction::Reject => "reject",
            KeyAction::Suspend => "suspend",
            KeyAction::Reinstate => "reinstate",
            KeyAction::Revoke => "revoke",
        }
    }
}

/// How one call to Dodo's fulfill endpoint ended, as `attempts.outcome` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 200: the grant holds our key.
    Delivered,
    /// 400/404/422: will never work.
    PermanentError,
    /// No answer, 5xx, 401/403 or 429: try again later.
    Retry,
    /// Would retry, but the attempt budget is spent.
    GaveUp,
    /// 409 and the grant holds our key.
    ConflictDelivered,
    /// 409 and the grant holds another key.
    ConflictDeliveredElsewhere,
    /// 409 and the grant was revoked.
    ConflictRevoked,
    /// 409 and Dodo marked the grant failed.
    ConflictFailed,
    /// 409 and the look-up could not tell why: try again later.
    ConflictUnresolved,
    /// 409 on a pending grant: Dodo already has this key value.
    KeyRejected,
    /// keyrelay itself failed while running the job; it is set aside for a human.
    InternalError,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::PermanentError => "permanent_error",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::GaveUp => "gave_up",
            AttemptOutcome::ConflictDelivered => "conflict_delivered",
            AttemptOutcome::ConflictDeliveredElsewhere => "conflict_delivered_elsewhere",
            AttemptOutcome::ConflictRevoked => "conflict_revoked",
            AttemptOutcome::ConflictFailed => "conflict_failed",
            AttemptOutcome::ConflictUnresolved => "conflict_unresolved",
            AttemptOutcome::KeyRejected => "key_rejected",
            AttemptOutcome::InternalError => "internal_error",
        }
    }
}
