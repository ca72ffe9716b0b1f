//! Dodo's API limits as one budget for every keyrelay process on the database. Dodo counts
//! calls per API key, in bursts (calls in any second) and sustained (calls in any minute), so a
//! per-process limit cannot keep three workers inside it. Each call first takes a turn: the
//! database hands out turn times that keep all processes' calls together inside both limits
//! (`take_rate_turn` in the migrations), and the caller sleeps until its time. A 429 pauses
//! the whole budget, not only the process that received it.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::db::Db;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// The budget's name in `rate_budget`: one per database, as Dodo counts per API key.
const BUDGET: &str = "dodo";

/// Calls allowed in any second (burst) and in any minute (sustained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub burst_per_sec: u32,
    pub requests_per_min: u32,
}

impl RateLimits {
    /// Dodo's default tier.
    pub const TIER0: RateLimits = RateLimits::new(40, 240);
    pub const TIER1: RateLimits = RateLimits::new(100, 1_000);
    pub const TIER2: RateLimits = RateLimits::new(500, 5_000);

    pub const fn new(burst_per_sec: u32, requests_per_min: u32) -> RateLimits {
        RateLimits {
            burst_per_sec,
            requests_per_min,
        }
    }

    /// The least time `calls` calls can span (first to last) without ever having more than the
    /// burst in one second or the sustained limit in one minute: what the budget allows.
    pub fn fastest(&self, calls: usize) -> Duration {
        let (burst, minute) = (self.burst_per_sec as usize, self.requests_per_min as usize);
        let mut at: Vec<f64> = Vec::with_capacity(calls);
        for n in 0..calls {
            let mut t = at.last().copied().unwrap_or(0.0);
            if n >= burst {
                t = t.max(at[n - burst] + 1.0);
            }
            if n >= minute {
                t = t.max(at[n - minute] + 60.0);
            }
            at.push(t);
        }
        Duration::from_secs_f64(at.last().copied().unwrap_or(0.0))
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/s burst, {}/min sustained",
            self.burst_per_sec, self.requests_per_min
        )
    }
}

/// The turns this process takes for its calls to Dodo.
#[derive(Debug)]
pub struct RateBudget {
    /// None: no limit (sandboxes, benchmarks); 429s still pause this process.
    shared: Option<(Db, RateLimits)>,
    paused_until: Mutex<Instant>,
}

/// A reserved moment to call Dodo.
#[derive(Debug)]
pub struct Turn {
    at: Instant,
}

impl Turn {
    /// How long until this turn comes.
    pub fn wait(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Sleeps until this turn comes.
    pub async fn arrive(&self) {
        tokio::time::sleep_until(self.at).await;
    }
}

impl RateBudget {
    /// No limit beyond pausing after a 429.
    pub fn unlimited() -> RateBudget {
        RateBudget {
            shared: None,
            paused_until: Mutex::new(Instant::now()),
        }
    }

    /// `limits` for every process on the database behind `pool`.
    pub fn shared(db: Db, limits: RateLimits) -> RateBudget {
        RateBudget {
            shared: Some((db, limits)),
            ..RateBudget::unlimited()
        }
    }

    pub fn limits(&self) -> Option<RateLimits> {
        self.shared.as_ref().map(|(_, limits)| *limits)
    }

    /// Takes the next turn. Its time is reckoned on the database's clock and returned as a
    /// wait, so processes on hosts whose clocks disagree still share one schedule.
    pub async fn take_turn(&self) -> Result<Turn, sqlx::Error> {
        let mut at = *self.paused_until.lock().expect("rate budget lock poisoned");
        if let Some((pool, limits)) = &self.shared {
            let wait_secs: f64 = sqlx::query_scalar(
                "SELECT greatest(0, extract(epoch FROM turn_at - clock_timestamp()))::float8 \
                 FROM take_rate_turn($1, $2, $3) AS turn_at",
            )
            .bind(BUDGET)
            .bind(limits.burst_per_sec as i32)
            .bind(limits.requests_per_min as i32)
            .fetch_one(pool)
            .await?;
            at = at.max(Instant::now() + Duration::from_secs_f64(wait_secs));
        }
        Ok(Turn { at })
    }

    /// Holds every caller back for `delay` (Dodo answered 429): in every process when the
    /// budget is shared, else in this one.
    pub async fn pause_for(&self, delay: Duration) {
        {
            let mut until = self.paused_until.lock().expect("rate budget lock poisoned");
            *until = (*until).max(Instant::now() + delay);
        }
        if let Some((pool, _)) = &self.shared {
            let paused = sqlx::query(
                "INSERT INTO rate_budget AS b (name, paused_until) \
                 VALUES ($1, clock_timestamp() + make_interval(secs => $2)) \
                 ON CONFLICT (name) DO UPDATE \
                 SET paused_until = greatest(b.paused_until, excluded.paused_until)",
            )
            .bind(BUDGET)
            .bind(delay.as_secs_f64())
            .execute(pool)
            .await;
            if let Err(e) = paused {
                tracing::warn!(error = %e, "could not pause the shared rate budget; only this process pauses");
            }
        }
    }
}

/// Takes the next turn as if asked at `asked_at` and returns its time: the schedule itself,
/// for checking it without waiting for real seconds to pass.
pub async fn take_turn_at(
    db: &Db,
    limits: RateLimits,
    asked_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT take_rate_turn($1, $2, $3, $4)")
        .bind(BUDGET)
        .bind(limits.burst_per_sec as i32)
        .bind(limits.requests_per_min as i32)
        .bind(asked_at)
        .fetch_one(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_schedule_fills_each_second_then_waits_for_the_minute() {
        let limits = RateLimits::new(20, 80);
        assert_eq!(limits.fastest(0), Duration::ZERO);
        assert_eq!(limits.fastest(20), Duration::ZERO);
        assert_eq!(limits.fastest(21), Duration::from_secs(1));
        assert_eq!(limits.fastest(80), Duration::from_secs(3));
        assert_eq!(limits.fastest(81), Duration::from_secs(60));
        assert_eq!(limits.fastest(101), Duration::from_secs(61));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_caller() {
        let budget = RateBudget::unlimited();
        let begin = Instant::now();
        budget.take_turn().await.unwrap().arrive().await;
        assert_eq!(begin.elapsed(), Duration::ZERO);
        budget.pause_for(Duration::from_secs(3)).await;
        budget.take_turn().await.unwrap().arrive().await;
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
    }
}
