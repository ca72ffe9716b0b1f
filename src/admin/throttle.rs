//! Sign-in throttling: each address may get the token wrong a few times a minute; after that
//! it is refused (429) until the minute is over, whatever it sends. Kept per process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens allowed per address and window.
const ALLOWED_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SignInThrottle {
    /// `Some(wait)` while `peer` is locked out.
    pub fn locked_out(&self, peer: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().expect("throttle lock poisoned");
        let (since, count) = failures.get(&peer)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*count >= ALLOWED_FAILURES).then_some(left)
    }

    /// Counts a wrong token from `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let mut failures = self.failures.lock().expect("throttle lock poisoned");
        failures.retain(|_, (since, _)| since.elapsed() < WINDOW);
        let entry = failures.entry(peer).or_insert((Instant::now(), 0));
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_too_many_failures_and_others_are_not() {
        let throttle = SignInThrottle::default();
        let guesser: IpAddr = "10.0.0.1".parse().unwrap();
        let colleague: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..ALLOWED_FAILURES - 1 {
            throttle.failed(guesser);
        }
        assert!(throttle.locked_out(guesser).is_none());
        throttle.failed(guesser);
        assert!(throttle.locked_out(guesser).is_some_and(|w| w <= WINDOW));
        assert!(throttle.locked_out(colleague).is_none());
    }
}
