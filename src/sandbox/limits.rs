//! The sandbox's rate limits, enforced as Dodo describes them when a test or the benchmark asks:
//! at most the burst in any second and the sustained limit in any minute, per API key; a call
//! over either limit is answered 429 with `Retry-After` and `X-RateLimit-*`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Sandbox;
use crate::dodo::RateLimits;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// The calls of the last minute, while limits are enforced.
#[derive(Debug, Default)]
pub(super) struct CallWindow {
    limits: Option<RateLimits>,
    recent: VecDeque<Instant>,
    admitted: Vec<Instant>,
    refused: u64,
}

/// A call refused for going over a limit, with what the 429's headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// Seconds until the call would be admitted (`Retry-After`, `X-RateLimit-Reset`).
    pub retry_after_secs: u64,
    /// The sustained limit (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Calls left in the current minute (`X-RateLimit-Remaining`).
    pub remaining: u32,
}

impl CallWindow {
    fn admit(&mut self, now: Instant) -> Result<(), OverLimit> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        let in_minute = self.recent.len();
        let (burst, per_min) = (
            limits.burst_per_sec as usize,
            limits.requests_per_min as usize,
        );
        // The n-th most recent call, and when it leaves a window of `span`.
        let frees = |n: usize, span: Duration| self.recent[in_minute - n] + span - now;
        let mut wait = Duration::ZERO;
        if in_minute >= per_min {
            wait = wait.max(frees(per_min, MINUTE));
        }
        let in_second = self
            .recent
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < SECOND)
            .count();
        if in_second >= burst {
            wait = wait.max(frees(burst, SECOND));
        }
        if !wait.is_zero() {
            self.refused += 1;
            return Err(OverLimit {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                limit: limits.requests_per_min,
                remaining: per_min.saturating_sub(in_minute) as u32,
            });
        }
        self.recent.push_back(now);
        self.admitted.push(now);
        Ok(())
    }
}

impl Sandbox {
    /// From now on, answers calls over `limits` with 429 (None: no limits, the default).
    pub fn enforce_rate_limits(&self, limits: Option<RateLimits>) {
        self.lock().calls = CallWindow {
            limits,
            ..CallWindow::default()
        };
    }

    /// Counts one API call against the limits, or refuses it.
    pub(super) fn admit_call(&self) -> Result<(), OverLimit> {
        self.lock().calls.admit(Instant::now())
    }

    /// When each call admitted under the limits arrived.
    pub fn admitted_calls(&self) -> Vec<Instant> {
        self.lock().calls.admitted.clone()
    }

    /// Calls refused with a 429 for going over the limits.
    pub fn calls_over_limit(&self) -> u64 {
        self.lock().calls.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(burst: u32, per_min: u32) -> CallWindow {
        CallWindow {
            limits: Some(RateLimits::new(burst, per_min)),
            ..CallWindow::default()
        }
    }

    #[test]
    fn a_burst_over_the_per_second_limit_is_refused_until_the_second_passes() {
        let mut w = window(3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(w.admit(t0).is_ok());
        }
        let refused = w.admit(t0 + Duration::from_millis(500)).unwrap_err();
        assert_eq!((refused.retry_after_secs, refused.remaining), (1, 97));
        assert!(w.admit(t0 + SECOND).is_ok());
        assert_eq!(w.refused, 1);
    }

    #[test]
    fn the_minute_limit_holds_over_a_sliding_minute() {
        let mut w = window(10, 20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(w.admit(t0 + Duration::from_secs(i)).is_ok());
        }
        let refused = w.admit(t0 + Duration::from_secs(30)).unwrap_err();
        assert_eq!((refused.retry_after_secs, refused.remaining), (30, 0));
        assert!(w.admit(t0 + MINUTE).is_ok());
        assert!(w.admit(t0 + MINUTE).is_err());
    }
}
