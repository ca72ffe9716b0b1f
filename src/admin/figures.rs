//! The overview's slow figures, shared by every viewer and read again at most every
//! `SLOW_TTL`: totals over all history (delivered and cancelled jobs, each pool's delivered
//! keys and sales, which count up to millions of rows) and the day's charts. What needs a
//! human — queued, running, retrying, waiting and failed jobs, the oldest grant without a key,
//! the last hour's charts — is read fresh on every view.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ops::stats::QueueStats;
use crate::pool::PoolStock;
use crate::store::history::Point;

/// How long the slow figures are reused.
pub const SLOW_TTL: Duration = Duration::from_secs(30);

/// A value read at most once per `ttl`; concurrent viewers wait for one read.
pub struct Ttl<T> {
    ttl: Duration,
    slot: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Ttl<T> {
    pub fn new(ttl: Duration) -> Ttl<T> {
        Ttl {
            ttl,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The value, read by `load` when there is none or it is older than the ttl.
    pub async fn get<E, Fut: Future<Output = Result<T, E>>>(
        &self,
        load: impl FnOnce() -> Fut,
    ) -> Result<T, E> {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = load().await?;
        *slot = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

/// Totals over all history.
#[derive(Clone)]
pub struct Slow {
    pub stats: QueueStats,
    pub pools: Vec<PoolStock>,
    pub read_at: DateTime<Utc>,
}

/// The overview's shared figures.
pub struct Figures {
    pub slow: Ttl<Slow>,
    /// The last day's charts: delivered, Dodo's answers, webhooks.
    pub day: Ttl<[Vec<Point>; 3]>,
}

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            slow: Ttl::new(SLOW_TTL),
            day: Ttl::new(SLOW_TTL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_is_reused_within_its_ttl_and_read_again_after() {
        let ttl = Ttl::new(Duration::from_millis(50));
        let read = |n: u32| async move { Ok::<_, ()>(n) };
        assert_eq!(ttl.get(|| read(1)).await, Ok(1));
        assert_eq!(ttl.get(|| read(2)).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(ttl.get(|| read(3)).await, Ok(3));
        // A failed read keeps nothing.
        let failing = Ttl::<u32>::new(Duration::from_secs(60));
        assert_eq!(failing.get(|| async { Err("down") }).await, Err("down"));
        assert_eq!(failing.get(|| read(4)).await, Ok(4));
    }
}
