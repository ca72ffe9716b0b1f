//! The store: every SQL statement keyrelay runs against its own tables. It is the only code that
//! writes `jobs`, `keys`, `events` and `audit_log`, and each function says in one line what it
//! guarantees. Everything above it (intake, fulfillment, lifecycle events, operators, the
//! reconciler, the benchmark) decides; the store records the decision atomically.
//!
//! - `enqueue`: events and the jobs they create; the one rule for which grants are served.
//! - `claim`: claiming due jobs with their keys (`make`: keys made for generate and sign
//!   pools; `sealed`: key values as stored), rejecting a key and reserving the next,
//!   parking and resuming jobs that wait for keys.
//! - `settle`: recording worker outcomes under the lease, lifecycle events, and the one
//!   statement that moves keys between states.
//! - `operator`: retry and cancel.
//! - `pools`: pools and key imports.
//! - `stock`: counts (keys per pool and state, jobs per state) and low-stock flags.
//! - `read`: what operators and the dashboard look at; `search`: finding jobs by id, key,
//!   state, pool and time, a page at a time; `history`: the dashboard's time series.
//! - `audit`, `prune`, and `admin` (signed-out sessions).

pub mod admin;
pub mod audit;
pub mod claim;
pub mod endpoint;
pub mod enqueue;
pub mod history;
mod make;
pub mod operator;
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
pub use operator::ActionResult;
pub use settle::{AttemptRecord, Completion, complete_batch};

/// Advisory-lock class for "keys of an entitlement": workers reserving keys hold it shared,
/// importers and pool creation hold it exclusively, so a job cannot be parked just as keys
/// for it arrive.
pub const KEY_LOCK_CLASS: i32 = 0x6b72_6b31;

/// What claiming does to a job row: running under a new fencing token until the lease
/// (seconds in `$2`) ends, with the attempt counted.
const TAKE_LEASE: &str = "state = 'running', lease_token = nextval('job_lease_tokens'), \
     run_at = now() + make_interval(secs => $2), attempts = jobs.attempts + 1, updated_at = now()";

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
