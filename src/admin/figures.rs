//! The overview's slow figures, shared by every viewer and read again (in the background) at
//! most every `SLOW_TTL`: totals over all history (delivered and cancelled jobs, each pool's delivered
//! keys and sales, which count up to millions of rows) and the day's charts. What needs a
//! human — queued, running, retrying, waiting and failed jobs, the oldest grant without a key,
//! the last hour's charts — is read fresh on every view.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ops::stats::QueueStats;
use crate::pool::PoolStock;
use crate::store::history::Point;

/// How long the slow figures are reused.
pub const SLOW_TTL: Duration = Duration::from_secs(30);

/// A value read at most once per `ttl`. Once there is one, nobody waits for a read again: a
/// view after the ttl gets the value it has and starts one read in the background for the
/// next view. Only the very first view waits (and concurrent first views wait for one read).
pub struct Ttl<T> {
    ttl: Duration,
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    slot: std::sync::Mutex<Option<(Instant, T)>>,
    first: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

impl<T: Clone + Send + 'static> Ttl<T> {
    pub fn new(ttl: Duration) -> Ttl<T> {
        Ttl {
            ttl,
            inner: Arc::new(Inner {
                slot: std::sync::Mutex::new(None),
                first: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
            }),
        }
    }

    fn current(&self) -> Option<(Instant, T)> {
        self.inner.slot.lock().expect("not poisoned").clone()
    }

    fn store(inner: &Inner<T>, value: T) {
        *inner.slot.lock().expect("not poisoned") = Some((Instant::now(), value));
    }

    /// The value; `load` reads it when there is none, or in the background when it is older
    /// than the ttl.
    pub async fn get<E, Fut>(&self, load: impl FnOnce() -> Fut) -> Result<T, E>
    where
        E: std::fmt::Display,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if let Some((at, value)) = self.current() {
            if at.elapsed() >= self.ttl && !self.inner.refreshing.swap(true, Ordering::AcqRel) {
                let inner = Arc::clone(&self.inner);
                let read = load();
                tokio::spawn(async move {
                    match read.await {
                        Ok(value) => Self::store(&inner, value),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not refresh the dashboard's totals; showing the last ones")
                        }
                    }
                    inner.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(value);
        }
        let _first = self.inner.first.lock().await;
        if let Some((_, value)) = self.current() {
            return Ok(value);
        }
        let value = load().await?;
        Self::store(&self.inner, value.clone());
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
    async fn a_stale_value_is_served_while_one_read_refreshes_it() {
        let ttl = Ttl::new(Duration::from_millis(50));
        let read = |n: u32| async move { Ok::<_, String>(n) };
        assert_eq!(ttl.get(|| read(1)).await, Ok(1));
        assert_eq!(ttl.get(|| read(2)).await, Ok(1), "fresh: reused");
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Stale: the old value at once, and a read in the background.
        assert_eq!(ttl.get(|| read(3)).await, Ok(1));
        let mut seen = 1;
        for _ in 0..100 {
            seen = ttl.get(|| read(4)).await.unwrap();
            if seen != 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen, 3, "the background read replaced it");
    }

    #[tokio::test]
    async fn a_failed_first_read_keeps_nothing_and_a_failed_refresh_keeps_the_last_value() {
        let ttl = Ttl::<u32>::new(Duration::from_millis(20));
        assert_eq!(
            ttl.get(|| async { Err("down".to_string()) }).await,
            Err("down".into())
        );
        assert_eq!(ttl.get(|| async { Ok::<_, String>(7) }).await, Ok(7));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ttl.get(|| async { Err("down".to_string()) }).await, Ok(7));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(ttl.get(|| async { Ok::<_, String>(8) }).await, Ok(7));
    }
}
