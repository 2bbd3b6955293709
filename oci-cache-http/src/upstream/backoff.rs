//! Backing off when an upstream says so: `429`/`503` with `Retry-After`
//! pause its host, and its `ratelimit-*` headers are read into an allowance.
//!
//! A pause is kept per origin (`scheme://host:port`), so every endpoint of
//! every chain on that host waits, and nothing is sent to it before the pause
//! ends: callers get the status it answered with and how long is left, which
//! the service passes on to clients as its own `Retry-After`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use oci_cache_core::observe::{RateLimitEvent, SharedObserver};
use oci_cache_core::reference::Registry;
use oci_cache_core::{UpstreamError, UpstreamErrorKind};

use super::breaker::{parse_retry_after, MAX_RETRY_AFTER};

#[derive(Debug, Clone, Copy)]
struct Pause {
    until: Instant,
    status: StatusCode,
}

/// Hosts that asked to be left alone, until when.
#[derive(Debug, Default)]
pub(super) struct Pauses(Mutex<HashMap<String, Pause>>);

impl Pauses {
    /// `Err` while `origin` is paused: the status it answered and how long
    /// is left, as an upstream error the chain and the service understand.
    pub(super) fn check(&self, origin: &str, label: &str) -> Result<(), UpstreamError> {
        let mut pauses = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pause) = pauses.get(origin).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= pause.until {
            pauses.remove(origin);
            return Ok(());
        }
        let left = pause.until - now;
        let kind = if pause.status == StatusCode::TOO_MANY_REQUESTS {
            UpstreamErrorKind::TooManyRequests
        } else {
            UpstreamErrorKind::Unavailable
        };
        // Whole seconds, rounded up: a client coming back on time finds the pause over.
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Err(UpstreamError::new(
            kind,
            label,
            format!(
                "answered {} with Retry-After; not contacted for another {seconds}s",
                pause.status
            ),
        )
        .with_retry_after(Some(Duration::from_secs(seconds))))
    }

    /// Records an answer from `origin`: a `429` or `503` with a `Retry-After`
    /// (capped at [`MAX_RETRY_AFTER`]) pauses it; a later end wins.
    pub(super) fn record(&self, origin: &str, status: StatusCode, headers: &HeaderMap) {
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            return;
        }
        let Some(wait) = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|d| d.min(MAX_RETRY_AFTER))
        else {
            return;
        };
        let until = Instant::now() + wait;
        tracing::warn!(
            origin,
            status = status.as_u16(),
            retry_after_s = wait.as_secs(),
            "upstream asked to back off; sending it nothing until Retry-After has passed"
        );
        let mut pauses = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pause = pauses
            .entry(origin.to_owned())
            .or_insert(Pause { until, status });
        if until >= pause.until {
            *pause = Pause { until, status };
        }
    }
}

/// Below this share of the limit, the allowance is reported as running low.
const LOW_SHARE: f64 = 0.10;

/// One upstream's pull allowance as its headers tell it.
#[derive(Debug, Default)]
pub(super) struct Allowance {
    /// Set once the low warning went out; cleared when the allowance is
    /// above the mark again (a new window), so it fires once per window.
    warned: AtomicBool,
}

impl Allowance {
    /// Reads `headers` of an answer from `upstream`: reports the limit and
    /// what remains, and warns once when what remains falls below 10 %.
    pub(super) fn record(
        &self,
        upstream: &Registry,
        headers: &HeaderMap,
        observer: &SharedObserver,
    ) {
        let limit = header_count(headers, "ratelimit-limit", "limit");
        let remaining = header_count(headers, "ratelimit-remaining", "remaining");
        if limit.is_none() && remaining.is_none() {
            return;
        }
        observer.rate_limit(&RateLimitEvent {
            upstream: upstream.clone(),
            limit,
            remaining,
        });
        let (Some(limit), Some(remaining)) = (limit, remaining) else {
            return;
        };
        let low = (remaining as f64) < (limit as f64) * LOW_SHARE;
        if !low {
            self.warned.store(false, Ordering::Relaxed);
        } else if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                upstream = %upstream,
                remaining,
                limit,
                "upstream pull allowance is running low (under 10% left in this window); \
                 further pulls may be refused with 429 until the window resets"
            );
        }
    }
}

/// A count from `name` (`76` or Docker Hub's `76;w=21600`), or else the
/// `key=` member of an IETF `RateLimit: limit=100, remaining=76` header.
fn header_count(headers: &HeaderMap, name: &str, key: &str) -> Option<u64> {
    let first_number = |v: &str| v.split([';', ',']).next()?.trim().parse::<u64>().ok();
    if let Some(count) = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(first_number)
    {
        return Some(count);
    }
    headers
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())?
        .split([',', ';'])
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn rate_limit_headers_in_every_form() {
        let hub = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
        ]);
        assert_eq!(header_count(&hub, "ratelimit-limit", "limit"), Some(100));
        assert_eq!(
            header_count(&hub, "ratelimit-remaining", "remaining"),
            Some(76)
        );
        let plain = headers(&[("RateLimit-Remaining", "5")]);
        assert_eq!(
            header_count(&plain, "ratelimit-remaining", "remaining"),
            Some(5)
        );
        let ietf = headers(&[("ratelimit", "limit=10, remaining=3, reset=60")]);
        assert_eq!(header_count(&ietf, "ratelimit-limit", "limit"), Some(10));
        assert_eq!(
            header_count(&ietf, "ratelimit-remaining", "remaining"),
            Some(3)
        );
        let junk = headers(&[("ratelimit-remaining", "lots")]);
        assert_eq!(
            header_count(&junk, "ratelimit-remaining", "remaining"),
            None
        );
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<RateLimitEvent>>);

    impl oci_cache_core::observe::Observer for Seen {
        fn rate_limit(&self, event: &RateLimitEvent) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    #[test]
    fn the_allowance_is_reported_and_warned_about_once_per_window() {
        let seen = std::sync::Arc::new(Seen::default());
        let observer: SharedObserver = seen.clone();
        let hub = Registry::docker_hub();
        let allowance = Allowance::default();
        let answer = |left: &str| {
            headers(&[
                ("ratelimit-limit", "100;w=21600"),
                ("ratelimit-remaining", left),
            ])
        };
        allowance.record(&hub, &answer("76;w=21600"), &observer);
        assert!(!allowance.warned.load(Ordering::Relaxed));
        allowance.record(&hub, &answer("9;w=21600"), &observer);
        assert!(allowance.warned.load(Ordering::Relaxed), "low: warned");
        allowance.record(&hub, &answer("8;w=21600"), &observer);
        assert!(
            allowance.warned.load(Ordering::Relaxed),
            "still this window"
        );
        allowance.record(&hub, &answer("100;w=21600"), &observer);
        assert!(
            !allowance.warned.load(Ordering::Relaxed),
            "a new window re-arms it"
        );
        allowance.record(&hub, &HeaderMap::new(), &observer);
        let events = seen.0.lock().unwrap();
        assert_eq!(
            events.len(),
            4,
            "answers without the headers report nothing"
        );
        assert_eq!(events[1].remaining, Some(9));
        assert_eq!(events[1].limit, Some(100));
    }

    #[test]
    fn a_pause_holds_until_retry_after_and_is_capped() {
        let pauses = Pauses::default();
        pauses.record(
            "http://a",
            StatusCode::OK,
            &headers(&[("retry-after", "5")]),
        );
        assert!(
            pauses.check("http://a", "a").is_ok(),
            "only 429 and 503 pause"
        );
        pauses.record("http://a", StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        assert!(
            pauses.check("http://a", "a").is_ok(),
            "no Retry-After, no pause"
        );
        pauses.record(
            "http://a",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "5")]),
        );
        let err = pauses.check("http://a", "a").unwrap_err();
        assert_eq!(err.kind(), UpstreamErrorKind::TooManyRequests);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
        assert!(pauses.check("http://b", "b").is_ok(), "per host");
        pauses.record(
            "http://b",
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "999999")]),
        );
        let err = pauses.check("http://b", "b").unwrap_err();
        assert_eq!(err.kind(), UpstreamErrorKind::Unavailable);
        assert_eq!(err.retry_after(), Some(MAX_RETRY_AFTER));
        pauses.record(
            "http://c",
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "0")]),
        );
        assert!(pauses.check("http://c", "c").is_ok(), "over at once");
    }
}
