//! Operations: what operators and on-call engineers do (jobs, events and replay), and what runs
//! beside the workers to keep things right (the reconciler and pruning, low-stock alerts, the
//! figures for metrics and the dashboard).

pub mod alerts;
pub mod events;
pub mod jobs;
pub mod reconcile;
pub mod sealing;
pub mod source_health;
pub mod stats;
