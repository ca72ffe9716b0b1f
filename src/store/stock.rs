//! Counting: keys per pool and state, jobs per state, and the low-stock flag. A pool's
//! available keys are counted in one place (`AVAILABLE_IN_POOL`), on the partial index
//! `keys_available`.

use crate::db::Db;
use serde::Serialize;
use sqlx::{Postgres, Transaction};

use crate::domain::JobState;
use crate::sources::Source;

/// The available keys of the row `pools`.
const AVAILABLE_IN_POOL: &str =
    "(SELECT count(*) FROM keys WHERE keys.pool_id = pools.id AND keys.state = 'available')";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PoolStock {
    pub name: String,
    pub entitlement_id: String,
    pub source: Source,
    pub available: i64,
    pub reserved: i64,
    pub delivered: i64,
    pub rejected: i64,
    /// Delivered, then revoked for a reason that can reverse.
    pub suspended: i64,
    pub revoked: i64,
    pub low_stock_threshold: i32,
    pub low_stock: bool,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
    /// Grants delivered from the pool in the last 24 hours and 7 days.
    pub sold_last_day: i64,
    pub sold_last_week: i64,
    /// When a `list` pool runs out at the recent sales rate (the faster of the last day's and
    /// the last week's): days from now. None when nothing sold, or keys are made per grant.
    #[sqlx(skip)]
    pub runs_out_in_days: Option<f64>,
    /// Why a worker cannot make or get this pool's keys (no signing key, an unknown or
    /// unreachable endpoint); None when its source is usable.
    pub source_problem: Option<String>,
    pub source_checked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PoolStock {
    /// The forecast in words: "about 12 days", "unlimited", or why there is none.
    pub fn forecast(&self) -> String {
        match (self.source.makes_keys(), self.runs_out_in_days) {
            (true, _) => "never (keys are made per grant)".into(),
            (false, _) if self.available == 0 => "empty now".into(),
            (false, None) => "no sales in the last week".into(),
            (false, Some(d)) if d < 1.0 => format!("within a day (about {:.0} h)", d * 24.0),
            (false, Some(d)) if d < 1.5 => "in about 1 day".into(),
            (false, Some(d)) => format!("in about {d:.0} days"),
        }
    }

    fn with_forecast(mut self) -> PoolStock {
        let per_day = (self.sold_last_day as f64).max(self.sold_last_week as f64 / 7.0);
        self.runs_out_in_days =
            (self.source == Source::List && per_day > 0.0).then(|| self.available as f64 / per_day);
        self
    }
}

/// Every pool with its keys counted by state, by name.
pub async fn list_pools(db: &Db) -> Result<Vec<PoolStock>, sqlx::Error> {
    sqlx::query_as(&format!(
        r#"
        WITH kept AS (
            SELECT pool_id, state, sum(n) AS n FROM key_tallies GROUP BY pool_id, state
        ), sold AS (
            SELECT entitlement_id,
                   sum(n) FILTER (WHERE finished_in > now() - interval '1 day') AS last_day,
                   sum(n) AS last_week
            FROM job_tallies
            WHERE state = 'delivered' AND finished_in > now() - interval '7 days'
            GROUP BY entitlement_id
        )
        SELECT pools.name, pools.entitlement_id, pools.source,
               {AVAILABLE_IN_POOL} AS available,
               (SELECT count(*) FROM keys
                WHERE keys.pool_id = pools.id AND keys.state = 'reserved') AS reserved,
               coalesce(sum(kept.n) FILTER (WHERE kept.state = 'delivered'), 0)::int8 AS delivered,
               coalesce(sum(kept.n) FILTER (WHERE kept.state = 'rejected'), 0)::int8  AS rejected,
               coalesce(sum(kept.n) FILTER (WHERE kept.state = 'suspended'), 0)::int8 AS suspended,
               coalesce(sum(kept.n) FILTER (WHERE kept.state = 'revoked'), 0)::int8   AS revoked,
               pools.low_stock AS low_stock_threshold,
               {AVAILABLE_IN_POOL} < pools.low_stock AS low_stock,
               pools.activations_limit, pools.expires_in_days,
               pools.source_problem, pools.source_checked_at,
               coalesce(min(sold.last_day), 0)::int8 AS sold_last_day,
               coalesce(min(sold.last_week), 0)::int8 AS sold_last_week
        FROM pools
        LEFT JOIN kept ON kept.pool_id = pools.id
        LEFT JOIN sold ON sold.entitlement_id = pools.entitlement_id
        GROUP BY pools.id ORDER BY pools.name
        "#
    ))
    .fetch_all(db)
    .await
    .map(|pools: Vec<PoolStock>| pools.into_iter().map(PoolStock::with_forecast).collect())
}

/// Every pool's name, in order.
pub async fn pool_names(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM pools ORDER BY name")
        .fetch_all(db)
        .await
}

/// A pool that holds stock (`list` pools: the others make each key when a grant needs it).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Stock {
    pub pool: String,
    pub available: i64,
    pub low_stock_threshold: i32,
}

/// Available keys and the low-stock threshold of every `list` pool, by pool name (cheap: read
/// at every metrics scrape).
pub async fn stock_per_pool(db: &Db) -> Result<Vec<Stock>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT pools.name AS pool, {AVAILABLE_IN_POOL} AS available, pools.low_stock AS low_stock_threshold \
         FROM pools WHERE pools.source = 'list' ORDER BY pools.name"
    ))
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LowStock {
    pub pool: String,
    pub entitlement_id: String,
    pub available: i64,
    pub threshold: i32,
}

/// Flags the pools of `entitlements` that are below their threshold and not yet flagged, and
/// returns them: each restock alerts once. With `shop`, each also owes the shop a
/// `pool.low_stock` notice, written with the flag.
pub async fn flag_low_stock(
    db: &Db,
    entitlements: &[String],
    shop: bool,
) -> Result<Vec<LowStock>, sqlx::Error> {
    sqlx::query_as(&format!(
        r#"
        WITH stock AS (
            SELECT pools.id, pools.name, pools.entitlement_id, pools.low_stock,
                   {AVAILABLE_IN_POOL} AS available
            FROM pools
            WHERE pools.entitlement_id = ANY($1) AND pools.low_stock > 0
              AND NOT pools.low_stock_alerted
        ), flagged AS (
            UPDATE pools SET low_stock_alerted = true
            FROM stock WHERE pools.id = stock.id AND stock.available < stock.low_stock
              AND NOT pools.low_stock_alerted
            RETURNING stock.name AS pool, stock.entitlement_id, stock.available,
                      stock.low_stock AS threshold
        ), noticed AS (
            INSERT INTO outbox (target, event_type, data)
            SELECT 'shop', 'pool.low_stock',
                   jsonb_build_object('pool', pool, 'entitlement_id', entitlement_id,
                                      'available', available, 'threshold', threshold)
            FROM flagged WHERE $2
        )
        SELECT * FROM flagged
        "#
    ))
    .bind(entitlements)
    .bind(shop)
    .fetch_all(db)
    .await
}

/// Clears the pool's low-stock flag if it has enough keys again.
pub async fn rearm_low_stock_alert(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE pools SET low_stock_alerted = false \
         WHERE id = $1 AND low_stock_alerted AND {AVAILABLE_IN_POOL} >= low_stock"
    ))
    .bind(pool_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Job counts by state (every state present, zero when empty): the finished ones from the
/// kept tallies, the open ones on their partial indexes; a few rows however many jobs are
/// stored.
pub async fn count_jobs_by_state(db: &Db) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    let rows: Vec<(JobState, i64)> = sqlx::query_as(&format!(
        "SELECT state, sum(n)::int8 AS n FROM job_tallies GROUP BY state \
         UNION ALL {OPEN_JOBS_BY_STATE}"
    ))
    .fetch_all(db)
    .await?;
    Ok(JobState::ALL
        .into_iter()
        .map(|s| (s, rows.iter().find(|r| r.0 == s).map_or(0, |r| r.1)))
        .collect())
}

/// Jobs in the states that need work or a human (queued, running, retrying, waiting for keys,
/// failed), each counted on its partial index: fast however much history there is.
pub async fn count_open_jobs_by_state(db: &Db) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    sqlx::query_as(OPEN_JOBS_BY_STATE).fetch_all(db).await
}

/// `(state, count)` of the open states, each counted on its partial index (`jobs_due`,
/// `jobs_waiting`, `jobs_failed`); a state with no jobs may be missing.
pub(crate) const OPEN_JOBS_BY_STATE: &str = "SELECT state, count(*) AS n FROM jobs \
     WHERE state IN ('queued', 'retrying', 'running') GROUP BY state \
     UNION ALL SELECT 'waiting_for_keys', count(*) FROM jobs WHERE state = 'waiting_for_keys' \
     UNION ALL SELECT 'failed', count(*) FROM jobs WHERE state = 'failed'";

/// How long after a minute ends its webhooks are rolled up: far longer than intake gives a
/// webhook's insert to commit.
const WEBHOOKS_SETTLE: &str = "2 minutes";

/// Folds the rows appended to the tallies into one per group, and rolls up the webhooks of the
/// minutes that have settled (see the `create_tallies` migration); the counts do not change.
pub async fn compact_tallies(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT compact_tallies(), roll_up_webhooks($1::interval)")
        .bind(WEBHOOKS_SETTLE)
        .execute(db)
        .await?;
    Ok(())
}

/// Jobs still to be settled (queued, running or retrying).
pub async fn count_unsettled_jobs(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'retrying')")
        .fetch_one(db)
        .await
}

/// Seconds since the oldest queued job was created (0 when none waits). The jobs in flight are
/// taken first (on `jobs_due`), then their oldest: asked for `min(created_at)` directly, the
/// planner may walk the `created_at` index from the oldest finished job and filter, which at
/// millions of finished jobs and an empty queue reads every one of them (seconds).
pub const OLDEST_QUEUED_AGE: &str = "WITH queued AS MATERIALIZED \
     (SELECT created_at FROM jobs WHERE state = 'queued') \
     SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM queued";

/// Seconds since the oldest grant that still has no key was paid for: every job that is not
/// delivered, failed or cancelled, taken first on the partial indexes `jobs_due` and
/// `jobs_waiting` (as in [`OLDEST_QUEUED_AGE`]), so finished history is never read.
pub const OLDEST_UNFINISHED_AGE: &str = "WITH unfinished AS MATERIALIZED \
     (SELECT created_at FROM jobs WHERE state IN ('queued', 'retrying', 'running') \
      UNION ALL SELECT created_at FROM jobs WHERE state = 'waiting_for_keys') \
     SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM unfinished";

/// [`OLDEST_QUEUED_AGE`].
pub async fn oldest_queued_age_secs(db: &Db) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(OLDEST_QUEUED_AGE).fetch_one(db).await
}

/// [`OLDEST_UNFINISHED_AGE`].
pub async fn oldest_unfinished_age_secs(db: &Db) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(OLDEST_UNFINISHED_AGE)
        .fetch_one(db)
        .await
}

/// Dead tuples of keyrelay's tables, by table name.
pub async fn dead_tuples(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables \
         WHERE relname IN ('events', 'jobs', 'attempts', 'keys', 'pools', 'audit_log') ORDER BY relname",
    )
    .fetch_all(db)
    .await
}
