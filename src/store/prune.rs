//! Pruning: old events, finished jobs and sent notices go, in small batches so no lock is
//! held long. Keys, pools and the audit trail are kept, and so is the job of a suspended key
//! (it may yet be reinstated, or revoked by a newer grant of its subscription).

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Rows deleted per statement while pruning.
const PRUNE_BATCH: i64 = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub jobs: u64,
    pub notices: u64,
}

/// Deletes events received and finished jobs (with their attempts) settled before `cutoff`.
pub async fn prune(db: &Db, cutoff: DateTime<Utc>) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    loop {
        let n = sqlx::query(
            "DELETE FROM events WHERE webhook_id IN \
             (SELECT webhook_id FROM events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned.events += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE grant_id IN \
             (SELECT grant_id FROM jobs WHERE finished_at < $1 \
              AND state IN ('delivered', 'failed', 'cancelled') \
              AND NOT EXISTS (SELECT 1 FROM keys WHERE keys.id = jobs.key_id \
                              AND keys.state = 'suspended') LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned.jobs += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE created_at < $1 AND state = 'sent' LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned.notices += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    // What the charts kept of the attempts and events goes with them.
    sqlx::query("DELETE FROM answer_tallies WHERE minute < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    sqlx::query("DELETE FROM webhook_minutes WHERE minute < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    Ok(pruned)
}

/// Waits (up to a minute) until no autovacuum worker runs on the server, then writes a
/// checkpoint: a timed run then neither shares the machine with a vacuum nor flushes the
/// pages written before it. A role that may not checkpoint (superuser or `pg_checkpoint`)
/// only waits.
pub async fn quiesce(db: &Db) -> Result<(), sqlx::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let vacuuming: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(db)
        .await?;
        if vacuuming == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match db.execute_outside_transaction("CHECKPOINT").await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(()),
        done => done,
    }
}

/// Vacuums and analyzes the queue's tables and their tallies, so a measurement starts from
/// fresh statistics.
pub async fn vacuum_analyze(db: &Db) -> Result<(), sqlx::Error> {
    for table in [
        "jobs",
        "keys",
        "key_values",
        "job_tallies",
        "key_tallies",
        "answer_tallies",
    ] {
        db.execute_outside_transaction(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}
