//! The dashboard's time series: grants delivered and Dodo's answers by status, read from the
//! per-minute tallies kept as they happen, and webhooks received, from the minutes rolled up
//! (a chart reads at most a day of minutes, however busy the shop); and queue depth by state,
//! which only exists as samples taken once a minute (`record_queue_sample`).

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::JobState;
use crate::store::stock::OPEN_JOBS_BY_STATE;

/// The states whose depth is sampled: the unfinished ones, and `failed` (waiting for a human).
pub const SAMPLED_STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Retrying,
    JobState::WaitingForKeys,
    JobState::Failed,
];

/// A count per bucket and series: (bucket start, series name, count).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Point {
    pub bucket: DateTime<Utc>,
    pub series: String,
    pub value: i64,
}

/// `column` floored to `bucket_secs`, as SQL.
fn bucket(column: &str) -> String {
    format!("to_timestamp(floor(extract(epoch FROM {column}) / $2) * $2)")
}

/// Grants delivered per bucket since `from` (at most a day back: older minutes are kept by
/// the hour).
pub async fn delivered(
    db: &Db,
    from: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<Point>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} AS bucket, 'delivered' AS series, sum(n)::int8 AS value FROM job_tallies \
         WHERE state = 'delivered' AND finished_in >= $1 GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1",
        bucket("finished_in")
    ))
    .bind(from)
    .bind(bucket_secs as f64)
    .fetch_all(db)
    .await
}

/// Dodo's answers per bucket since `from`, by status class (as the metrics name them).
pub async fn dodo_answers(
    db: &Db,
    from: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<Point>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} AS bucket, series, sum(n)::int8 AS value FROM answer_tallies \
         WHERE minute >= $1 GROUP BY 1, 2 ORDER BY 1",
        bucket("minute")
    ))
    .bind(from)
    .bind(bucket_secs as f64)
    .fetch_all(db)
    .await
}

/// Webhooks stored per bucket since `from` (refused ones are not stored; the metrics count
/// those): the minutes rolled up, then the webhooks since, counted one by one.
pub async fn webhooks(
    db: &Db,
    from: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<Point>, sqlx::Error> {
    // Where the rolled-up minutes end, read first and passed as a value: the planner then
    // estimates the webhooks since from its statistics (a few minutes' worth), where a bound
    // computed in the statement gets a third of the table (at five million events, a plan
    // costly enough to be JIT-compiled, 10 ms each time). Minutes rolled up between the two
    // statements are counted once, from the events.
    let rolled: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(minute) + interval '1 minute' FROM webhook_minutes")
            .fetch_one(db)
            .await?;
    let split = rolled.map_or(from, |upto| upto.max(from));
    sqlx::query_as(&format!(
        "SELECT {} AS bucket, 'received' AS series, sum(n)::int8 AS value FROM ( \
             SELECT minute, n FROM webhook_minutes WHERE minute >= $1 AND minute < $3 \
             UNION ALL \
             SELECT received_at, 1 FROM events WHERE received_at >= $3 \
         ) received(minute, n) GROUP BY 1 HAVING sum(n) > 0 ORDER BY 1",
        bucket("minute")
    ))
    .bind(from)
    .bind(bucket_secs as f64)
    .bind(split)
    .fetch_all(db)
    .await
}

/// Queue depth by state since `from`: the largest sample in each bucket.
pub async fn queue_depth(
    db: &Db,
    from: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<Point>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} AS bucket, state::text AS series, max(jobs) AS value FROM queue_samples \
         WHERE at >= $1 GROUP BY 1, 2 ORDER BY 1",
        bucket("at")
    ))
    .bind(from)
    .bind(bucket_secs as f64)
    .fetch_all(db)
    .await
}

/// Samples queue depth for the current minute (once, however many processes do it). Each
/// state is counted on its partial index, so finished history does not slow it down.
pub async fn record_queue_sample(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        r#"
        WITH counts AS ({OPEN_JOBS_BY_STATE})
        INSERT INTO queue_samples (at, state, jobs)
        SELECT date_trunc('minute', now()), sampled.state, coalesce(counts.n, 0)
        FROM unnest($1::job_state[]) AS sampled(state)
        LEFT JOIN counts ON counts.state = sampled.state
        ON CONFLICT (at, state) DO NOTHING
        "#
    ))
    .bind(SAMPLED_STATES.to_vec())
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes samples taken before `cutoff`.
pub async fn prune_samples(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM queue_samples WHERE at < $1")
        .bind(cutoff)
        .execute(db)
        .await?
        .rows_affected())
}
