//! A job's own moves, as one pure table: from (state, event) to the next state, or `None`
//! when the event does not apply in that state. The store writes each move with the target
//! this table names and only from the states it allows; `lifecycle::settle` is the matching
//! table for Dodo's grant events, and `fulfillment::decide` for Dodo's answers.

use crate::domain::JobState::{self, *};

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A worker takes a due job under a new lease, counting the attempt. A running job is
    /// taken only once its lease expired (its worker stopped).
    Claim,
    /// The claimed job found no key: its pool is empty, or no pool serves it.
    NoKey,
    /// Keys arrived for its pool (an import, or the pool was created).
    KeysArrived,
    /// Its next step is another worker's: its key came from the source it asks (`http`), or
    /// Dodo already held its key and the source is to be asked anew.
    Handoff,
    /// Dodo holds its key for the grant.
    Deliver,
    /// The attempt failed in a way that may pass: try again at `run_at`.
    RetryLater,
    /// No attempt can succeed without a person: out of attempts, or refused for good.
    Fail,
    /// An operator replays a failed or cancelled job with a fresh attempt budget.
    OperatorRetry,
    /// An operator stops trying a job that is not running.
    OperatorCancel,
}

impl JobEvent {
    pub const ALL: [JobEvent; 9] = [
        JobEvent::Claim,
        JobEvent::NoKey,
        JobEvent::KeysArrived,
        JobEvent::Handoff,
        JobEvent::Deliver,
        JobEvent::RetryLater,
        JobEvent::Fail,
        JobEvent::OperatorRetry,
        JobEvent::OperatorCancel,
    ];
}

/// The state a job in `state` moves to on `event`; `None` when the event does not apply.
pub fn next(state: JobState, event: JobEvent) -> Option<JobState> {
    match (state, event) {
        (Queued | Retrying | Running, JobEvent::Claim) => Some(Running),
        (Running, JobEvent::NoKey) => Some(WaitingForKeys),
        (WaitingForKeys, JobEvent::KeysArrived) => Some(Queued),
        (Running, JobEvent::Handoff) => Some(Queued),
        (Running, JobEvent::Deliver) => Some(Delivered),
        (Running, JobEvent::RetryLater) => Some(Retrying),
        (Running, JobEvent::Fail) => Some(Failed),
        (Failed | Cancelled, JobEvent::OperatorRetry) => Some(Queued),
        (Queued | Retrying | WaitingForKeys | Failed, JobEvent::OperatorCancel) => Some(Cancelled),
        _ => None,
    }
}

/// The states `event` applies in, for a statement's `WHERE state IN (...)`.
pub fn from_states(event: JobEvent) -> Vec<JobState> {
    JobState::ALL
        .into_iter()
        .filter(|s| next(*s, event).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (state, event) pair, with the state it must lead to.
    const TABLE: [(JobState, [Option<JobState>; 9]); 7] = [
        // Claim, NoKey, KeysArrived, Handoff, Deliver, RetryLater, Fail, OperatorRetry, OperatorCancel
        (
            Queued,
            [
                Some(Running),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(Cancelled),
            ],
        ),
        (
            Running,
            [
                Some(Running),
                Some(WaitingForKeys),
                None,
                Some(Queued),
                Some(Delivered),
                Some(Retrying),
                Some(Failed),
                None,
                None,
            ],
        ),
        (
            Retrying,
            [
                Some(Running),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(Cancelled),
            ],
        ),
        (
            WaitingForKeys,
            [
                None,
                None,
                Some(Queued),
                None,
                None,
                None,
                None,
                None,
                Some(Cancelled),
            ],
        ),
        (
            Delivered,
            [None, None, None, None, None, None, None, None, None],
        ),
        (
            Failed,
            [
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(Queued),
                Some(Cancelled),
            ],
        ),
        (
            Cancelled,
            [None, None, None, None, None, None, None, Some(Queued), None],
        ),
    ];

    #[test]
    fn every_state_and_event_leads_where_the_table_says() {
        assert_eq!(TABLE.len(), JobState::ALL.len());
        for (state, row) in TABLE {
            for (event, expected) in JobEvent::ALL.into_iter().zip(row) {
                assert_eq!(next(state, event), expected, "{state:?} on {event:?}");
            }
        }
    }

    #[test]
    fn a_delivered_job_never_moves_by_its_own_events() {
        for event in JobEvent::ALL {
            assert_eq!(next(Delivered, event), None, "{event:?}");
        }
    }

    #[test]
    fn only_a_claim_leaves_the_queue_for_a_worker_and_only_a_running_job_is_settled() {
        for event in [
            JobEvent::NoKey,
            JobEvent::Handoff,
            JobEvent::Deliver,
            JobEvent::RetryLater,
            JobEvent::Fail,
        ] {
            assert_eq!(from_states(event), [Running], "{event:?}");
        }
        assert_eq!(from_states(JobEvent::Claim), [Queued, Running, Retrying]);
    }

    #[test]
    fn finished_jobs_move_only_by_an_operator() {
        for state in JobState::ALL.into_iter().filter(|s| s.is_finished()) {
            for event in JobEvent::ALL {
                if next(state, event).is_some() {
                    assert!(
                        matches!(event, JobEvent::OperatorRetry | JobEvent::OperatorCancel),
                        "{state:?} on {event:?}"
                    );
                }
            }
        }
    }
}
