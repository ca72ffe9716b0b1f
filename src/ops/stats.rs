//! Figures read from the database at scrape time: jobs by state, the oldest queued job's age,
//! available keys per pool, and dead tuples per table. Rendered as Prometheus gauges next to
//! the process's own counters, and shown on the admin dashboard.

use std::fmt::Write;

use crate::db::Db;

use crate::domain::JobState;
use crate::store::stock;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub jobs_by_state: Vec<(JobState, i64)>,
    /// Seconds since the oldest job that is ready to run was created (0 when none waits).
    pub oldest_queued_age_secs: f64,
    /// Seconds since the oldest grant without a key (any unfinished job) was created.
    pub oldest_unfinished_age_secs: f64,
    /// Stock of the pools that hold keys (`list` pools).
    pub keys_available: Vec<stock::Stock>,
    /// Every pool, and whether a worker found that it cannot get keys.
    pub source_broken: Vec<(String, bool)>,
    pub dead_tuples: Vec<(String, i64)>,
    /// Notices owed to vendors and the shop.
    pub outbox: crate::store::outbox::Backlog,
}

/// Every figure, read at once (each is a few small index reads; one after another they were
/// seven round trips).
pub async fn read(db: &Db) -> Result<QueueStats, sqlx::Error> {
    let (
        jobs_by_state,
        oldest_queued_age_secs,
        oldest_unfinished_age_secs,
        keys_available,
        source_broken,
        dead_tuples,
        outbox,
    ) = futures_util::try_join!(
        stock::count_jobs_by_state(db),
        stock::oldest_queued_age_secs(db),
        stock::oldest_unfinished_age_secs(db),
        stock::stock_per_pool(db),
        crate::store::pools::source_status(db),
        stock::dead_tuples(db),
        crate::store::outbox::backlog(db),
    )?;
    Ok(QueueStats {
        jobs_by_state,
        oldest_queued_age_secs,
        oldest_unfinished_age_secs,
        keys_available,
        source_broken,
        dead_tuples,
        outbox,
    })
}

/// Runs `step` every `period` until shutdown; a step that fails is logged (`what` names it)
/// and tried again at the next tick.
async fn every<F, Fut>(
    period: std::time::Duration,
    what: &str,
    shutdown: tokio_util::sync::CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), sqlx::Error>>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = step().await {
            tracing::debug!(error = %e, "could not {what}; will try at the next tick");
        }
    }
}

/// Samples queue depth by state once a minute until shutdown, for the dashboard's chart. Every
/// process does it; the first one each minute writes the sample.
pub async fn sample_queue_depth(db: Db, shutdown: tokio_util::sync::CancellationToken) {
    let period = std::time::Duration::from_secs(60);
    every(period, "sample queue depth", shutdown, || {
        crate::store::history::record_queue_sample(&db)
    })
    .await
}

/// How often the tallies are compacted: every statement that changes jobs or keys appends a
/// row, so at a few thousand grants a second this keeps a read of them to tens of thousands
/// of rows at most.
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Compacts the job and key tallies every few seconds until shutdown. Every process does it;
/// compactions beside each other are safe.
pub async fn compact_tallies(db: Db, shutdown: tokio_util::sync::CancellationToken) {
    every(COMPACT_EVERY, "compact the tallies", shutdown, || {
        stock::compact_tallies(&db)
    })
    .await
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures in Prometheus text format.
pub fn render(stats: &QueueStats) -> String {
    let mut out = String::new();
    let b = &stats.outbox;
    let _ = writeln!(
        out,
        "# HELP keyrelay_outbox_pending Notices owed to a vendor or the shop, not yet delivered.\n\
         # TYPE keyrelay_outbox_pending gauge\n\
         keyrelay_outbox_pending {}\n\
         # HELP keyrelay_outbox_failed Notices parked for a human (a 4xx, a redirect, or given up).\n\
         # TYPE keyrelay_outbox_failed gauge\n\
         keyrelay_outbox_failed {}\n\
         # HELP keyrelay_outbox_oldest_pending_seconds How long the oldest undelivered notice has been owed.\n\
         # TYPE keyrelay_outbox_oldest_pending_seconds gauge\n\
         keyrelay_outbox_oldest_pending_seconds {:.0}",
        b.pending, b.failed, b.oldest_pending_secs
    );
    let _ = writeln!(
        out,
        "# HELP keyrelay_jobs Jobs by state.\n# TYPE keyrelay_jobs gauge"
    );
    for (state, n) in &stats.jobs_by_state {
        let _ = writeln!(out, "keyrelay_jobs{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_oldest_queued_job_age_seconds Age of the oldest queued job.\n\
         # TYPE keyrelay_oldest_queued_job_age_seconds gauge\n\
         keyrelay_oldest_queued_job_age_seconds {:.3}",
        stats.oldest_queued_age_secs
    );
    let _ = writeln!(
        out,
        "# HELP keyrelay_oldest_unfinished_job_age_seconds Age of the oldest grant still without a key.\n\
         # TYPE keyrelay_oldest_unfinished_job_age_seconds gauge\n\
         keyrelay_oldest_unfinished_job_age_seconds {:.3}",
        stats.oldest_unfinished_age_secs
    );
    let _ = writeln!(
        out,
        "# HELP keyrelay_keys_available Available keys per list pool.\n# TYPE keyrelay_keys_available gauge"
    );
    for s in &stats.keys_available {
        let _ = writeln!(
            out,
            "keyrelay_keys_available{{pool=\"{}\"}} {}",
            label(&s.pool),
            s.available
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_pool_source_broken 1 when workers found that the pool cannot get keys (no signing key, an unknown or unreachable key source); `keyrelay pool list` says why.\n\
         # TYPE keyrelay_pool_source_broken gauge"
    );
    for (name, broken) in &stats.source_broken {
        let _ = writeln!(
            out,
            "keyrelay_pool_source_broken{{pool=\"{}\"}} {}",
            label(name),
            u8::from(*broken)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_pool_low_stock_threshold The low-stock threshold of each list pool that has one.\n\
         # TYPE keyrelay_pool_low_stock_threshold gauge"
    );
    for s in stats
        .keys_available
        .iter()
        .filter(|s| s.low_stock_threshold > 0)
    {
        let _ = writeln!(
            out,
            "keyrelay_pool_low_stock_threshold{{pool=\"{}\"}} {}",
            label(&s.pool),
            s.low_stock_threshold
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_table_dead_tuples Dead tuples per table.\n# TYPE keyrelay_table_dead_tuples gauge"
    );
    for (table, n) in &stats.dead_tuples {
        let _ = writeln!(
            out,
            "keyrelay_table_dead_tuples{{table=\"{}\"}} {n}",
            label(table)
        );
    }
    out
}
