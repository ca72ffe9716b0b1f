//! What Dodo's answers mean (the table "What each Dodo answer does" in the README), as one pure function: the answer to a fulfill
//! call and, after a 409, the grant look-up become a `Decision` — the job's next state, what
//! happens to its key, how the attempt is recorded, and why.

use std::time::Duration;

use crate::dodo::{CallError, FulfillAnswer, Grant, GrantStatus};
use crate::domain::{AttemptOutcome, JobState, KeyAction, LicenseKey};

/// Where the job goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The job ends in this state.
    Finish(JobState),
    /// Try again later with the same key: after `retry_after` if Dodo named a time, else after
    /// the backoff.
    RetryLater { retry_after: Option<Duration> },
    /// Dodo already holds our key value: reject it and send the grant's next key at once.
    NextKey,
}

/// How loudly to say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
    /// Someone must fix a setting (or look at a failed job).
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub next: Next,
    pub key: KeyAction,
    pub outcome: AttemptOutcome,
    /// Why: the attempt's error and the job's last error.
    pub error: Option<String>,
    pub severity: Severity,
    /// false: the attempt the claim counted is given back (Dodo asked us to slow down).
    pub counts_as_attempt: bool,
}

/// Which attempt this is, and how many are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub attempt: u32,
    pub max_attempts: u32,
}

/// Whether the answer needs the grant looked up before anything can be decided (a 409).
pub fn needs_lookup(answer: &Result<FulfillAnswer, CallError>) -> bool {
    matches!(answer, Ok(a) if a.status == 409)
}

/// Decides what a fulfill answer (and, for a 409, the look-up of the grant) means for a job
/// that sent `our_key` on attempt `budget.attempt`.
pub fn decide(
    answer: &Result<FulfillAnswer, CallError>,
    lookup: Option<&Result<Option<Grant>, CallError>>,
    our_key: &LicenseKey,
    budget: Budget,
) -> Decision {
    let answer = match answer {
        Ok(answer) => answer,
        // Nothing reached Dodo: no attempt is spent.
        Err(e @ CallError::NotSent(_)) => {
            return Decision {
                next: Next::RetryLater { retry_after: None },
                key: KeyAction::Keep,
                outcome: AttemptOutcome::Retry,
                error: Some(e.to_string()),
                severity: Severity::Warn,
                counts_as_attempt: false,
            };
        }
        Err(e) => return retry(AttemptOutcome::Retry, e.to_string(), None, false, budget),
    };
    let detail = answer
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match answer.status {
        200..=299 => finish(
            JobState::Delivered,
            KeyAction::Deliver,
            AttemptOutcome::Delivered,
            None,
        ),
        409 => conflict(lookup, our_key, budget),
        400 | 404 | 422 => Decision {
            severity: Severity::Warn,
            ..finish(
                JobState::Failed,
                KeyAction::Release,
                AttemptOutcome::PermanentError,
                Some(format!("Dodo answered {}{detail}", answer.status)),
            )
        },
        401 | 403 => retry(
            AttemptOutcome::Retry,
            format!(
                "Dodo answered {}{detail}; check dodo.api_key (DODO_PAYMENTS_API_KEY) and its write access",
                answer.status
            ),
            None,
            true,
            budget,
        ),
        // Being told to slow down is not a failed attempt: it never spends the budget.
        429 => Decision {
            next: Next::RetryLater {
                retry_after: answer.retry_after,
            },
            key: KeyAction::Keep,
            outcome: AttemptOutcome::Retry,
            error: Some(format!("Dodo answered 429 (rate limited){detail}")),
            severity: Severity::Warn,
            counts_as_attempt: false,
        },
        status => retry(
            AttemptOutcome::Retry,
            format!("Dodo answered {status}{detail}"),
            None,
            false,
            budget,
        ),
    }
}

/// A 409, resolved by the grant's state at Dodo.
fn conflict(
    lookup: Option<&Result<Option<Grant>, CallError>>,
    our_key: &LicenseKey,
    budget: Budget,
) -> Decision {
    let unresolved =
        |why: String| retry(AttemptOutcome::ConflictUnresolved, why, None, false, budget);
    let grant = match lookup {
        None => return unresolved("409 from Dodo, and the grant was not looked up".into()),
        Some(Err(e)) => {
            return unresolved(format!("409 from Dodo and the grant look-up failed: {e}"));
        }
        Some(Ok(None)) => {
            return unresolved("409 from Dodo but the grant is not in its listing yet".into());
        }
        Some(Ok(Some(grant))) => grant,
    };
    let ours = our_key.is(grant.key_value());
    let (state, key, outcome, error) = match &grant.status {
        GrantStatus::Delivered | GrantStatus::Other(_) if ours => (
            JobState::Delivered,
            KeyAction::Deliver,
            AttemptOutcome::ConflictDelivered,
            None,
        ),
        GrantStatus::Delivered => (
            JobState::Delivered,
            KeyAction::Release,
            AttemptOutcome::ConflictDeliveredElsewhere,
            because(
                "409: the grant was fulfilled elsewhere with another key; our key was released",
            ),
        ),
        GrantStatus::Revoked if ours => (
            JobState::Cancelled,
            KeyAction::Revoke,
            AttemptOutcome::ConflictRevoked,
            because("409: the grant was delivered with our key, then revoked"),
        ),
        GrantStatus::Revoked => (
            JobState::Cancelled,
            KeyAction::Release,
            AttemptOutcome::ConflictRevoked,
            because("409: the grant was revoked before fulfillment; our key was released"),
        ),
        GrantStatus::Failed => (
            JobState::Failed,
            if ours {
                KeyAction::Keep
            } else {
                KeyAction::Release
            },
            AttemptOutcome::ConflictFailed,
            because("409: Dodo reports the grant as Failed"),
        ),
        GrantStatus::Pending => {
            return Decision {
                next: Next::NextKey,
                key: KeyAction::Reject,
                outcome: AttemptOutcome::KeyRejected,
                error: Some(
                    "409: Dodo already has this key value; it is rejected and the next key is tried"
                        .into(),
                ),
                severity: Severity::Warn,
                counts_as_attempt: true,
            };
        }
        GrantStatus::Other(status) => {
            return unresolved(format!(
                "409 from Dodo and the grant is in an unknown state `{status}`"
            ));
        }
    };
    finish(state, key, outcome, error)
}

fn because(reason: &str) -> Option<String> {
    Some(reason.to_string())
}

fn finish(
    state: JobState,
    key: KeyAction,
    outcome: AttemptOutcome,
    error: Option<String>,
) -> Decision {
    Decision {
        next: Next::Finish(state),
        key,
        outcome,
        error,
        severity: Severity::Info,
        counts_as_attempt: true,
    }
}

/// Try again later with the same key — unless the attempt budget is spent: then the job fails
/// and its key stays bound to it until a human retries or cancels it.
pub fn retry(
    outcome: AttemptOutcome,
    error: String,
    retry_after: Option<Duration>,
    config_problem: bool,
    budget: Budget,
) -> Decision {
    if budget.attempt >= budget.max_attempts {
        return Decision {
            next: Next::Finish(JobState::Failed),
            key: KeyAction::Keep,
            outcome: AttemptOutcome::GaveUp,
            error: Some(format!(
                "gave up after {} attempts; last error: {error}",
                budget.attempt
            )),
            severity: Severity::Error,
            counts_as_attempt: true,
        };
    }
    Decision {
        next: Next::RetryLater { retry_after },
        key: KeyAction::Keep,
        outcome,
        error: Some(error),
        severity: if config_problem {
            Severity::Error
        } else {
            Severity::Warn
        },
        counts_as_attempt: true,
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
