//! Failed logins per client address: after `MAX_FAILURES` within `WINDOW`
//! the address is answered 429 until the window ends, so a password cannot
//! be guessed at bcrypt speed from one host.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address and window.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window failures are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond it expired entries are dropped first
/// and then the map is cleared (a flood of addresses must not grow memory).
const MAX_TRACKED: usize = 100_000;

/// Failure counts by client address.
#[derive(Debug, Default)]
pub(crate) struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    /// `Some(seconds)` to wait when `addr` is blocked.
    pub(crate) fn blocked(&self, addr: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().ok()?;
        let (count, since) = failures.get(&addr)?;
        let elapsed = since.elapsed();
        (*count >= MAX_FAILURES && elapsed < WINDOW).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts a failed attempt from `addr`.
    pub(crate) fn failed(&self, addr: IpAddr) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        let entry = failures.entry(addr).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// Forgets `addr`'s failures after a success.
    pub(crate) fn succeeded(&self, addr: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_address_only() {
        let limiter = FailureLimiter::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.failed(a);
        }
        assert_eq!(limiter.blocked(a), None);
        limiter.failed(a);
        assert!(limiter.blocked(a).is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(limiter.blocked(b), None);
        limiter.succeeded(a);
        assert_eq!(limiter.blocked(a), None);
    }
}
