//! A circuit breaker per endpoint, so that a dead upstream costs a map lookup
//! instead of a connect or first-byte timeout on every request.
//!
//! Closed: requests go through; each connection failure or timeout counts,
//! any answer (even a 404) resets the count. After `threshold` failures in a
//! row the breaker opens for `cooldown`: the endpoint is skipped. When the
//! cool-down is over one request probes it (half-open) while the others keep
//! skipping; its outcome closes or reopens the breaker. A `429` opens the
//! breaker at once for the `Retry-After` the endpoint asked for.
//!
//! Decisions use [`UpstreamErrorKind`] only, never message text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_cache_core::UpstreamErrorKind;

/// Longest `Retry-After` honoured; a registry asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    /// Connection failures and timeouts in a row.
    failures: u32,
    /// Skipped until then.
    open_until: Option<Instant>,
}

/// Breakers of every endpoint, keyed by endpoint URL.
#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    cooldown: Duration,
    states: Mutex<HashMap<String, State>>,
}

/// What one request to an endpoint came to, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint answered (any status but 429 and 5xx).
    Answered,
    /// It could not be reached, timed out or failed with 5xx.
    Failed,
    /// It asked us to back off (429) for this long (`None`: no `Retry-After`).
    Throttled(Option<Duration>),
}

impl Outcome {
    /// The outcome an upstream error of `kind` stands for.
    pub(crate) fn of_error(kind: UpstreamErrorKind, retry_after: Option<Duration>) -> Outcome {
        match kind {
            UpstreamErrorKind::Unavailable | UpstreamErrorKind::Timeout => Outcome::Failed,
            UpstreamErrorKind::TooManyRequests => Outcome::Throttled(retry_after),
            _ => Outcome::Answered,
        }
    }
}

impl Breakers {
    /// Breakers that open after `threshold` failures in a row (0 disables them)
    /// and stay open for `cooldown`.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breakers {
            threshold,
            cooldown,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// `None` when a request to `endpoint` may go out now; otherwise how long
    /// the breaker stays open. Past the cool-down this lets exactly one probe
    /// through and keeps the breaker open for the others.
    pub(crate) fn check(&self, endpoint: &str) -> Option<Duration> {
        let Ok(mut states) = self.states.lock() else {
            return None;
        };
        let state = states.get_mut(endpoint)?;
        let open_until = state.open_until?;
        let now = Instant::now();
        if now < open_until {
            return Some(open_until - now);
        }
        // Half-open: this caller probes; everyone else waits another cool-down
        // or until the probe's outcome is recorded.
        state.open_until = Some(now + self.cooldown);
        None
    }

    /// Records what a request to `endpoint` came to.
    pub(crate) fn record(&self, endpoint: &str, outcome: Outcome) {
        if self.threshold == 0 {
            return;
        }
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        match outcome {
            Outcome::Answered => {
                if let Some(state) = states.remove(endpoint) {
                    if state.open_until.is_some() {
                        tracing::info!(endpoint, "endpoint answers again; circuit breaker closed");
                    }
                }
            }
            Outcome::Failed => {
                let state = states.entry(endpoint.to_owned()).or_default();
                state.failures = state.failures.saturating_add(1);
                if state.failures >= self.threshold {
                    if state.open_until.is_none() {
                        tracing::warn!(
                            endpoint,
                            failures = state.failures,
                            cooldown_s = self.cooldown.as_secs_f64(),
                            "endpoint keeps failing; circuit breaker open, skipping it for the cool-down"
                        );
                    }
                    state.open_until = Some(Instant::now() + self.cooldown);
                }
            }
            Outcome::Throttled(retry_after) => {
                let wait = retry_after.unwrap_or(self.cooldown).min(MAX_RETRY_AFTER);
                tracing::warn!(
                    endpoint,
                    retry_after_s = wait.as_secs_f64(),
                    "endpoint answered 429; skipping it until Retry-After has passed"
                );
                let state = states.entry(endpoint.to_owned()).or_default();
                state.open_until = Some(Instant::now() + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let b = Breakers::new(3, Duration::from_millis(50));
        assert_eq!(b.check("e"), None);
        b.record("e", Outcome::Failed);
        b.record("e", Outcome::Failed);
        assert_eq!(b.check("e"), None, "two failures keep it closed");
        b.record("e", Outcome::Failed);
        assert!(b.check("e").is_some(), "third failure opens it");
        assert_eq!(b.check("other"), None, "breakers are per endpoint");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.check("e"), None, "the probe goes through");
        assert!(b.check("e").is_some(), "others skip while it probes");
        b.record("e", Outcome::Answered);
        assert_eq!(b.check("e"), None, "an answer closes it");
    }

    #[test]
    fn an_answer_resets_the_count_and_429_opens_for_retry_after() {
        let b = Breakers::new(2, Duration::from_secs(60));
        b.record("e", Outcome::Failed);
        b.record("e", Outcome::Answered);
        b.record("e", Outcome::Failed);
        assert_eq!(b.check("e"), None);
        b.record("e", Outcome::Throttled(Some(Duration::from_secs(7))));
        let left = b.check("e").unwrap();
        assert!(left <= Duration::from_secs(7) && left > Duration::from_secs(6));
        b.record("f", Outcome::Throttled(Some(Duration::from_secs(100_000))));
        assert!(b.check("f").unwrap() <= MAX_RETRY_AFTER);
    }

    #[test]
    fn threshold_zero_disables() {
        let b = Breakers::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            b.record("e", Outcome::Failed);
        }
        assert_eq!(b.check("e"), None);
    }

    #[test]
    fn kinds_map_to_outcomes() {
        assert_eq!(
            Outcome::of_error(UpstreamErrorKind::Timeout, None),
            Outcome::Failed
        );
        assert_eq!(
            Outcome::of_error(UpstreamErrorKind::NotFound, None),
            Outcome::Answered
        );
        assert_eq!(
            Outcome::of_error(
                UpstreamErrorKind::TooManyRequests,
                Some(Duration::from_secs(1))
            ),
            Outcome::Throttled(Some(Duration::from_secs(1)))
        );
    }
}
