//! Fulfillment: claim queued jobs, send each grant its key through Dodo, decide every answer,
//! and record the outcome under the job's lease.
//!
//! - `worker`: the pool of tasks, the claim loop and the batched completer.
//! - `run`: one job, top to bottom: call Dodo, `decide`, hand the decision to the store.
//! - `decide`: what Dodo's answers mean, as a pure function.
//! - `retry`: the one backoff.
//! - `signal`: wake-ups (in-process and LISTEN/NOTIFY).

pub mod decide;
pub mod retry;
pub mod run;
pub mod signal;
pub mod worker;

pub use run::{WorkerContext, run_job};
pub use signal::JobSignal;
pub use worker::{Worker, run_batch};
