//! A circuit breaker per endpoint, so that a dead upstream costs a map lookup
//! instead of a connect or first-byte timeout on every request.
//!
//! Closed: requests go through; each connection failure or timeout counts,
//! any answer (even a 404) resets the count. After `threshold` failures in a
//! row the breaker opens for `cooldown`: the endpoint is skipped. When the
//! cool-down is over one request probes it (half-open) while the others keep
//! skipping; its outcome closes or reopens the breaker. A `429` without
//! `Retry-After` opens the breaker at once for the cool-down; one with it
//! pauses the whole host instead (`backoff`).
//!
//! Decisions use [`UpstreamErrorKind`] only, never message text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_cache_core::UpstreamErrorKind;

/// Longest `Retry-After` honoured (ten minutes); a registry asking for more
/// is retried after this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Longest cool-down: the configuration refuses more, and an embedder's
/// larger value is cut to it, so `now + cooldown` cannot overflow.
const MAX_COOLDOWN: Duration = oci_cache_core::bounds::DAY;

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
            // With a Retry-After the whole host is paused (`backoff`), and
            // clients are told 429 rather than "skipped": the breaker stays out.
            UpstreamErrorKind::TooManyRequests if retry_after.is_some() => Outcome::Answered,
            UpstreamErrorKind::TooManyRequests => Outcome::Throttled(None),
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
            cooldown: cooldown.min(MAX_COOLDOWN),
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

    /// Records what a request to `endpoint` came to; `Some(open)` when the
    /// breaker opened (true) or closed (false) because of it.
    pub(crate) fn record(&self, endpoint: &str, outcome: Outcome) -> Option<bool> {
        if self.threshold == 0 {
            return None;
        }
        let Ok(mut states) = self.states.lock() else {
            return None;
        };
        match outcome {
            Outcome::Answered => {
                let state = states.remove(endpoint)?;
                state.open_until.is_some().then(|| {
                    tracing::info!(endpoint, "endpoint answers again; circuit breaker closed");
                    false
                })
            }
            Outcome::Failed => {
                let state = states.entry(endpoint.to_owned()).or_default();
                state.failures = state.failures.saturating_add(1);
                if state.failures < self.threshold {
                    return None;
                }
                let opened = state.open_until.is_none();
                if opened {
                    tracing::warn!(
                        endpoint,
                        failures = state.failures,
                        cooldown_s = self.cooldown.as_secs_f64(),
                        "endpoint keeps failing; circuit breaker open, skipping it for the cool-down"
                    );
                }
                state.open_until = Some(Instant::now() + self.cooldown);
                opened.then_some(true)
            }
            Outcome::Throttled(retry_after) => {
                let wait = retry_after.unwrap_or(self.cooldown).min(MAX_RETRY_AFTER);
                tracing::warn!(
                    endpoint,
                    retry_after_s = wait.as_secs_f64(),
                    "endpoint answered 429; skipping it until Retry-After has passed"
                );
                let state = states.entry(endpoint.to_owned()).or_default();
                let opened = state.open_until.is_none();
                state.open_until = Some(Instant::now() + wait);
                opened.then_some(true)
            }
        }
    }
}

/// A `Retry-After` value: delay-seconds or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110); a date in the past is zero.
pub(crate) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut parts = value.split_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = days * 86_400 + h * 3600 + m * 60 + sec;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_cooldown_past_the_clock_does_not_panic() {
        // `Instant::now() + Duration::MAX` panicked the worker that opened it.
        let b = Breakers::new(1, Duration::MAX);
        assert_eq!(b.record("e", Outcome::Failed), Some(true));
        let open_for = b.check("e").unwrap();
        assert!(
            open_for <= MAX_COOLDOWN && open_for > MAX_COOLDOWN / 2,
            "{open_for:?}"
        );
    }

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
    fn retry_after_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", std::time::UNIX_EPOCH),
            Some(Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "soon",
            "-5",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
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
            Outcome::Answered,
            "the host's pause honours a Retry-After"
        );
        assert_eq!(
            Outcome::of_error(UpstreamErrorKind::TooManyRequests, None),
            Outcome::Throttled(None)
        );
    }
}
