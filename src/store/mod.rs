//! The store: every SQL statement keyrelay runs against its own tables. It is the only code that
//! writes `jobs`, `keys`, `events` and `audit_log`, and each function says in one line what it
//! guarantees. Everything above it (intake, fulfillment, lifecycle events, operators, the
//! reconciler, the benchmark) decides; the store records the decision atomically.
//!
//! - `enqueue`: events and the jobs they create; the one rule for which grants are served.
//! - `claim`: claiming due jobs with their keys, rejecting a key and reserving the next,
//!   parking jobs that find no key.
//! - `bind`: the one place a key is bound to a grant, whatever its source yielded (a key
//!   from stock, or a new one); `sealed`: key values as stored.
//! - `asking`: jobs whose source is asked over the network (`http` pools): claimed for the
//!   ask step, then bound to the key answered (every answer kept in `received_keys`).
//! - `settle`: recording worker outcomes under the lease, and lifecycle events;
//!   `key_changes`: the one statement that moves bound keys between states, and revoking the
//!   suspended keys a newer grant supersedes; `outbox`: the notices those changes owe.
//! - `operator`: retry and cancel.
//! - `pools`: pools and key imports, and resuming jobs that wait for keys.
//! - `stock`: counts (keys per pool and state, jobs per state) and low-stock flags.
//! - `read`: what operators and the dashboard look at; `search`: finding jobs by id, key,
//!   state, pool and time, a page at a time; `history`: the dashboard's time series.
//! - `audit`, `prune`, `admin` (signed-out sessions), and `bulk` (the benchmark's history).

pub mod admin;
pub mod asking;
pub mod audit;
mod bind;
pub mod bulk;
pub mod claim;
pub mod enqueue;
pub mod history;
mod key_changes;
pub mod operator;
pub mod outbox;
pub mod pools;
pub mod prune;
pub mod read;
pub mod sealed;
pub mod search;
pub mod settle;
pub mod stock;

pub use claim::{
    ClaimedJob, NextKey, ReservedKey, claim_batch, extend_lease, reject_key_and_reserve_next,
};
pub use enqueue::{NewEvent, Recorded};
pub use key_changes::supersede;
pub use operator::ActionResult;
pub use outbox::Recipients;
pub use settle::{AttemptRecord, Completion, complete_batch};

use crate::domain::JobState;
use crate::jobs::JobEvent;

/// Advisory-lock class for "keys of an entitlement": workers reserving keys hold it shared,
/// importers and pool creation hold it exclusively, so a job cannot be parked just as keys
/// for it arrive.
pub const KEY_LOCK_CLASS: i32 = 0x6b72_6b31;

/// What claiming does to a job row (`JobEvent::Claim`): running under a new fencing token until the lease
/// (seconds in `$2`) ends, with the attempt counted.
const TAKE_LEASE: &str = "state = 'running', lease_token = nextval('job_lease_tokens'), \
     run_at = now() + make_interval(secs => $2), attempts = jobs.attempts + 1, updated_at = now()";

/// The lease fence: what a statement that moves a running job requires of it, with the grant
/// id in `$1` and the lease token its claim gave in `$2`. A worker whose lease ran out (and
/// whose job another worker took) changes nothing.
const LEASE_FENCE: &str = "grant_id = $1 AND lease_token = $2 AND state = 'running'";

/// Jobs a claim may take (`JobEvent::Claim`): written as a literal so the partial index
/// `jobs_due` answers it.
const DUE: &str = "jobs.state IN ('queued', 'retrying', 'running') AND jobs.run_at <= now()";

/// Jobs without a key whose pool's source is asked over the network (`http`): the ask step
/// claims them (`asking`), the claim never does.
const ASKED_ELSEWHERE: &str = "jobs.key_id IS NULL AND jobs.entitlement_id IN \
     (SELECT pools.entitlement_id FROM pools WHERE pools.source = 'http')";

/// The state `event` moves a job in `from` to, as `jobs::next` says; a statement writes it
/// only where its `WHERE` holds the job in `from`.
fn moved(from: JobState, event: JobEvent) -> JobState {
    crate::jobs::next(from, event)
        .unwrap_or_else(|| panic!("a job in {from:?} does not move on {event:?}"))
}

/// The NOTIFY channel that says "a job is ready".
pub const JOBS_CHANNEL: &str = "keyrelay_jobs";

/// Sends the "job ready" notification (on commit, when inside a transaction).
pub async fn notify_jobs_ready<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(executor)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_jobs_are_the_states_a_claim_applies_in() {
        let listed: Vec<&str> = DUE
            .split(['(', ')'])
            .nth(1)
            .unwrap()
            .split(',')
            .map(|s| s.trim().trim_matches('\''))
            .collect();
        let claimable: Vec<&str> = crate::jobs::from_states(JobEvent::Claim)
            .into_iter()
            .map(JobState::as_str)
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        let mut claimable_sorted = claimable.clone();
        claimable_sorted.sort();
        assert_eq!(listed_sorted, claimable_sorted);
    }

    #[test]
    fn every_move_the_store_writes_is_in_the_table() {
        for (from, event) in [
            (JobState::Running, JobEvent::NoKey),
            (JobState::Running, JobEvent::Handoff),
            (JobState::Running, JobEvent::Fail),
            (JobState::Running, JobEvent::RetryLater),
            (JobState::WaitingForKeys, JobEvent::KeysArrived),
        ] {
            assert!(
                crate::jobs::next(from, event).is_some(),
                "{from:?} on {event:?}"
            );
        }
        assert!(LEASE_FENCE.contains("state = 'running'"));
    }
}
