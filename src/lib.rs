//! keyrelay: fulfil Dodo Payments license-key grants from your own key pools, exactly once.
//! See README.md for use and ARCHITECTURE.md for how it works.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod cli;
pub mod configuration;
pub mod db;
pub mod dodo;
pub mod domain;
pub mod events;
pub mod fulfillment;
pub mod intake;
pub mod jobs;
pub mod pool;
pub mod reconcile;
pub mod sandbox;
pub mod startup;
pub mod stats;
pub mod telemetry;
