//! keyrelay's integration tests: real Postgres, real HTTP, the sandbox as Dodo.

mod answers;
mod cli;
mod concurrency;
mod crash;
mod duplicates;
mod helpers;
mod lifecycle;
mod payloads;
mod pools;
mod signature;
