//! The one backoff: exponential with jitter, capped, and `Retry-After` honoured. Workers use it
//! between attempts, the completer while the database is away, alerts between sends.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1-based). Exponential from `base`, capped
    /// at `max`, with "equal jitter" (between half and all of it) so many failed jobs do not
    /// return together. A `Retry-After` from Dodo replaces the backoff, within the cap.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max);
        }
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + rng.random_range(Duration::ZERO..=ceiling - half)
    }

    /// The un-jittered delay after `attempt`: `base * 2^(attempt-1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << exp.min(31)).min(self.max)
    }

    /// The shortest total wait `max_attempts` attempts can span (every jitter at its low end).
    pub fn minimum_span(&self, max_attempts: u32) -> Duration {
        (1..max_attempts).map(|a| self.ceiling(a) / 2).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(5), Duration::from_secs(16));
        assert_eq!(p.ceiling(11), Duration::from_secs(600));
        assert_eq!(p.ceiling(500), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_between_half_and_the_ceiling() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..40 {
            for _ in 0..50 {
                let d = p.delay(attempt, None, &mut rng);
                assert!(
                    d >= p.ceiling(attempt) / 2 && d <= p.ceiling(attempt),
                    "{attempt}: {d:?}"
                );
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "jitter should spread delays");
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(30)), &mut rng),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(86_400)), &mut rng),
            Duration::from_secs(600)
        );
    }
}
