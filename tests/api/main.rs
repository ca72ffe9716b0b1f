//! keyrelay's integration tests: real Postgres, real HTTP, the sandbox as Dodo.

mod admin;
mod admin_hardening;
mod after_delivery;
mod answers;
mod cli;
mod concurrency;
mod crash;
mod duplicates;
mod encryption;
mod failover;
mod grant_events;
mod helpers;
mod hostile;
mod http_source;

mod newcomer;
mod observability;
mod operations;
mod operator_input;
mod outage;
mod outbound;
mod outbox;
mod payloads;
mod pool_health;
mod pooler;
mod pools;
mod process;
mod rate_budget;
mod search;
mod servers;
mod shop_api;
mod signature;
mod signed_keys;
mod sources;
mod structure;
mod tallies;
