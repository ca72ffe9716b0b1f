//! Wrong-token throttling, for the sign-in form and for bearer tokens alike: each client
//! address may get a token wrong a few times a minute; after that it is refused (429) until
//! the minute is over, whatever it sends. Kept per process and per surface (the dashboard and
//! the shop API each have their own).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens allowed per address and window.
const ALLOWED_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past this the oldest window is forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct TokenThrottle {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl TokenThrottle {
    /// `Some(wait)` while `client` is locked out.
    pub fn locked_out(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().expect("throttle lock poisoned");
        let (since, count) = failures.get(&client)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*count >= ALLOWED_FAILURES).then_some(left)
    }

    /// Counts a wrong token from `client`; true when this one locks it out.
    pub fn failed(&self, client: IpAddr) -> bool {
        let mut failures = self.failures.lock().expect("throttle lock poisoned");
        failures.retain(|_, (since, _)| since.elapsed() < WINDOW);
        if failures.len() >= MAX_TRACKED
            && let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(a, _)| *a)
        {
            failures.remove(&oldest);
        }
        let entry = failures.entry(client).or_insert((Instant::now(), 0));
        entry.1 += 1;
        entry.1 == ALLOWED_FAILURES
    }

    /// Counts a wrong token from `client` on `surface` (`admin`, `api`), in the log and the
    /// metrics; the lockout it may cause is logged once.
    pub fn wrong_token(&self, client: IpAddr, surface: &'static str, path: &str) {
        let locked = self.failed(client);
        let path = crate::domain::printable(path, 100);
        tracing::warn!(%client, surface, %path, "request with a wrong token");
        metrics::counter!("keyrelay_wrong_tokens_total", "surface" => surface).increment(1);
        if locked {
            tracing::warn!(%client, surface, "too many wrong tokens from this address: refused for a minute");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_too_many_failures_and_others_are_not() {
        let throttle = TokenThrottle::default();
        let guesser: IpAddr = "10.0.0.1".parse().unwrap();
        let colleague: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..ALLOWED_FAILURES - 1 {
            assert!(!throttle.failed(guesser));
        }
        assert!(throttle.locked_out(guesser).is_none());
        assert!(throttle.failed(guesser), "the tenth locks it out");
        assert!(throttle.locked_out(guesser).is_some_and(|w| w <= WINDOW));
        assert!(!throttle.failed(guesser), "reported once");
        assert!(throttle.locked_out(colleague).is_none());
    }
}
