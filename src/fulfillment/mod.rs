//! Fulfillment: claim queued jobs, send each grant its key through Dodo, decide every answer,
//! and record the outcome under the job's lease.

pub mod answer;
pub mod retry;
pub mod signal;
pub mod storage;
pub mod worker;

pub use signal::JobSignal;
pub use worker::{Worker, WorkerContext, run_batch};
