//! Failed logins per client address: after `MAX_FAILURES` within `WINDOW`
//! the address is answered 429 until the window ends, so a password cannot
//! be guessed at bcrypt speed from one host.
//!
//! An attempt is reserved *before* its password is checked: a reservation
//! counts as a failure until the check succeeds. Counting only after the
//! check let every guess of a concurrent burst through (all of them were
//! checked before the first failure was counted). A request that finds the
//! budget used up by checks still running waits for them rather than being
//! refused, so a client with the right password that opens many requests at
//! once is slowed down, not turned away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Failures allowed per address and window.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window failures are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond it expired entries are dropped first
/// and then the map is cleared (a flood of addresses must not grow memory).
const MAX_TRACKED: usize = 100_000;

/// One address's attempts in the current window.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    /// Failed attempts plus those reserved and still being checked.
    spent: u32,
    /// Reserved attempts still being checked.
    pending: u32,
    /// When the window began.
    since: Instant,
}

/// Attempt counts by client address.
#[derive(Debug, Default)]
pub(crate) struct FailureLimiter {
    attempts: Mutex<HashMap<IpAddr, Attempts>>,
    /// Woken whenever a reserved attempt ends.
    settled: Notify,
}

/// What [`FailureLimiter::try_reserve`] found.
enum Reservation {
    Reserved,
    /// The budget is used up by checks still running: wait for one.
    Busy,
    /// Blocked for this many seconds.
    Blocked(u64),
}

impl FailureLimiter {
    /// Reserves one attempt for `addr`: `Err(seconds)` to wait when the
    /// address has used up its failures. The reservation counts as a
    /// failure unless [`Attempt::succeeded`] is called.
    pub(crate) async fn reserve(self: &Arc<Self>, addr: IpAddr) -> Result<Attempt, u64> {
        loop {
            // Registered before looking, so an attempt ending in between wakes it.
            let settled = self.settled.notified();
            match self.try_reserve(addr) {
                Reservation::Reserved => {
                    return Ok(Attempt {
                        limiter: Arc::clone(self),
                        addr,
                        settled: false,
                    })
                }
                Reservation::Blocked(wait) => return Err(wait),
                Reservation::Busy => settled.await,
            }
        }
    }

    fn try_reserve(&self, addr: IpAddr) -> Reservation {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if attempts.len() >= MAX_TRACKED && !attempts.contains_key(&addr) {
            attempts.retain(|_, a| a.pending > 0 || a.since.elapsed() < WINDOW);
            if attempts.len() >= MAX_TRACKED {
                attempts.retain(|_, a| a.pending > 0);
            }
        }
        let entry = attempts.entry(addr).or_insert(Attempts {
            spent: 0,
            pending: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= WINDOW {
            // A new window; checks still running stay reserved.
            entry.spent = entry.pending;
            entry.since = Instant::now();
        }
        if entry.spent < MAX_FAILURES {
            entry.spent += 1;
            entry.pending += 1;
            return Reservation::Reserved;
        }
        if entry.pending > 0 {
            return Reservation::Busy;
        }
        let left = WINDOW.saturating_sub(entry.since.elapsed());
        Reservation::Blocked(left.as_secs().max(1))
    }

    /// Ends one reserved attempt of `addr`; a success forgets the failures.
    fn settle(&self, addr: IpAddr, succeeded: bool) {
        {
            let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = attempts.get_mut(&addr) {
                entry.pending = entry.pending.saturating_sub(1);
                if succeeded {
                    entry.spent = entry.pending;
                }
                if entry.spent == 0 && entry.pending == 0 {
                    attempts.remove(&addr);
                }
            }
        }
        self.settled.notify_waiters();
    }
}

/// One reserved login attempt; a failure unless [`Attempt::succeeded`] is
/// called (a check cut short by a client that went away counts too).
#[derive(Debug)]
pub(crate) struct Attempt {
    limiter: Arc<FailureLimiter>,
    addr: IpAddr,
    settled: bool,
}

impl Attempt {
    /// The password was right: the address's failures are forgotten.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(self.addr, true);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self.addr, false);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn blocks_after_the_limit_per_address_only() {
        let limiter = Arc::new(FailureLimiter::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES - 1 {
            drop(limiter.reserve(a).await.unwrap());
        }
        limiter.reserve(a).await.unwrap().succeeded();
        for _ in 0..MAX_FAILURES {
            drop(limiter.reserve(a).await.unwrap());
        }
        let wait = limiter.reserve(a).await.unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        limiter.reserve(b).await.unwrap().succeeded();
        assert!(limiter.attempts.lock().unwrap().get(&b).is_none());
    }

    #[tokio::test]
    async fn reservations_in_flight_count_and_a_success_lets_the_waiters_in() {
        let limiter = Arc::new(FailureLimiter::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let mut held = Vec::new();
        for _ in 0..MAX_FAILURES {
            held.push(limiter.reserve(a).await.unwrap());
        }
        // The budget is reserved: the next one waits instead of being refused.
        let waiting = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move { limiter.reserve(a).await.map(Attempt::succeeded) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        held.pop().unwrap().succeeded();
        waiting.await.unwrap().unwrap();
        drop(held);
        assert_eq!(
            limiter.attempts.lock().unwrap().get(&a).map(|e| e.spent),
            Some(MAX_FAILURES - 1),
            "dropped reservations are failures"
        );
    }
}
