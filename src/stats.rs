//! Figures read from the database at scrape time: jobs by state, the oldest queued job's age,
//! available keys per pool, and dead tuples per table. Rendered as Prometheus gauges next to
//! the process's own counters, and shown on the admin dashboard.

use std::fmt::Write;

use sqlx::PgPool;

use crate::domain::JobState;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub jobs_by_state: Vec<(JobState, i64)>,
    /// Seconds since the oldest job that is ready to run was created (0 when none waits).
    pub oldest_queued_age_secs: f64,
    pub keys_available: Vec<(String, i64)>,
    pub dead_tuples: Vec<(String, i64)>,
}

pub async fn read(pool: &PgPool) -> Result<QueueStats, sqlx::Error> {
    let jobs_by_state = crate::jobs::count_by_state(pool).await?;
    let oldest_queued_age_secs: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM jobs WHERE state = 'queued'",
    )
    .fetch_one(pool)
    .await?;
    let keys_available = sqlx::query_as(
        "SELECT p.name, (SELECT count(*) FROM keys k WHERE k.pool_id = p.id AND k.state = 'available') \
         FROM pools p ORDER BY p.name",
    )
    .fetch_all(pool)
    .await?;
    let dead_tuples = sqlx::query_as(
        "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables \
         WHERE relname IN ('events', 'jobs', 'attempts', 'keys', 'pools', 'audit_log') ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    Ok(QueueStats {
        jobs_by_state,
        oldest_queued_age_secs,
        keys_available,
        dead_tuples,
    })
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
        "# HELP keyrelay_keys_available Available keys per pool.\n# TYPE keyrelay_keys_available gauge"
    );
    for (pool, n) in &stats.keys_available {
        let _ = writeln!(
            out,
            "keyrelay_keys_available{{pool=\"{}\"}} {n}",
            label(pool)
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
