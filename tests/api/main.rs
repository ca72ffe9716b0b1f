//! keyrelay's integration tests: real Postgres, real HTTP, the sandbox as Dodo.

mod admin;
mod admin_hardening;
mod answers;
mod cli;
mod concurrency;
mod crash;
mod duplicates;
mod encryption;
mod grant_events;
mod helpers;
mod hostile;
mod http_source;
mod lifecycle;
mod observability;
mod operations;
mod operator_input;
mod outage;
mod outbound;
mod payloads;
mod pools;
mod rate_budget;
mod search;
mod shop_api;
mod signature;
mod sources;
