//! Fulfillment: claim queued jobs, send each grant its key through Dodo, decide every answer,
//! and record the outcome under the job's lease.
//!
//! - `worker`: the pool of tasks, the claim loop and the batched completer.
//! - `ask`: the ask step of sources asked over the network (`http` pools), before the claim.
//! - `run`: one job, top to bottom: call Dodo, `decide`, hand the decision to the store.
//! - `decide`: what Dodo's answers mean, as a pure function.

pub mod ask;
pub mod decide;
pub mod run;
pub mod worker;

pub use run::{WorkerContext, run_job};
pub use worker::{Worker, run_batch};
