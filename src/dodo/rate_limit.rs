//! A per-process limit on calls to Dodo, shared by every worker. Requests are spaced evenly
//! (`max_requests_per_sec`, 0 = no limit), and a 429 pauses every caller, not only the one that
//! received it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    interval: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_slot: Instant,
    paused_until: Instant,
}

impl RateLimiter {
    pub fn new(max_requests_per_sec: u32) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            interval: (max_requests_per_sec > 0)
                .then(|| Duration::from_secs(1) / max_requests_per_sec),
            state: Mutex::new(State {
                next_slot: now,
                paused_until: now,
            }),
        }
    }

    /// Waits for this caller's turn.
    pub async fn acquire(&self) {
        let start = {
            let mut state = self.state.lock().expect("rate limiter lock poisoned");
            let start = Instant::now().max(state.paused_until);
            match self.interval {
                Some(interval) => {
                    let start = start.max(state.next_slot);
                    state.next_slot = start + interval;
                    start
                }
                None => start,
            }
        };
        tokio::time::sleep_until(start).await;
    }

    /// Holds every caller back for `delay` (after a 429).
    pub fn pause_for(&self, delay: Duration) {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        state.paused_until = state.paused_until.max(Instant::now() + delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_evenly() {
        let limiter = RateLimiter::new(10);
        let begin = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first goes at once, the next four 100 ms apart.
        assert_eq!(begin.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_caller() {
        let limiter = RateLimiter::new(0);
        let begin = Instant::now();
        limiter.acquire().await;
        assert_eq!(begin.elapsed(), Duration::ZERO);
        limiter.pause_for(Duration::from_secs(3));
        limiter.acquire().await;
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
    }
}
