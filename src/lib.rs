//! keyrelay: fulfil Dodo Payments license-key grants from your own key pools, exactly once.
//! See README.md for use and ARCHITECTURE.md for how it works.
//!
//! Layers point one way (ARCHITECTURE.md): `cli` and `harness` start things; `startup` wires
//! the HTTP server (`intake`, `admin`) and the workers (`fulfillment`) with `ops`; those decide,
//! with the pure rules of `fulfillment::decide` and `lifecycle`, and hand every write to `store`;
//! `dodo` talks to Dodo, `signal` wakes workers, `backoff` spaces retries; `domain` is the
//! vocabulary all of them share. `sandbox` stands in for Dodo and depends on nothing of
//! keyrelay's but Dodo's wire types.

pub mod admin;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod configuration;
pub mod crypto;
pub mod db;
pub mod dodo;
pub mod domain;
pub mod fulfillment;
pub mod guard;
pub mod harness;
pub mod intake;
pub mod jobs;
pub mod lifecycle;
pub mod ops;
pub mod outbound;
pub mod pool;
pub mod sandbox;
pub mod signal;
pub mod sources;
pub mod startup;
pub mod store;
pub mod telemetry;
