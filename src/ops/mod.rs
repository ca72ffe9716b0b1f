//! Operations: what operators and on-call engineers do, shared by the CLI and the dashboard,
//! and what runs beside the workers to keep things right. Each file stands alone:
//!
//! - `jobs`: show, retry, cancel and bulk actions on jobs.
//! - `events`: replaying a stored webhook.
//! - `reconcile`: the periodic pass that settles what Dodo knows and keyrelay does not, and
//!   pruning.
//! - `alerts`: low-stock alerts to the log, metrics, a webhook and the shop's outbox.
//! - `outbox`: the deliverer, which sends what keyrelay owes vendors and the shop.
//! - `source_health`: whether each pool can get keys in this worker process.
//! - `sealing`: sealing plaintext left by older versions, and resealing under a new key.
//! - `stats`: the figures behind `/metrics` and the dashboard, and the queue-depth samples.

pub mod alerts;
pub mod events;
pub mod jobs;
pub mod outbox;
pub mod reconcile;
pub mod sealing;
pub mod source_health;
pub mod stats;
