//! Prometheus metrics as an [`Observer`]: [`Metrics`].
//!
//! Every figure comes from the events the engine and the service report, so
//! an embedder gets the same numbers by installing [`Metrics`] as (one of)
//! its observers and calling [`Metrics::encode`] wherever it exposes metrics;
//! the binary serves them at `GET /metrics`. The exposition is written by
//! `prometheus-client` (the OpenMetrics text format, which Prometheus
//! scrapes), never by hand.
//!
//! Families (a counter `x` is exposed as `x_total`):
//!
//! | family | labels | from |
//! |---|---|---|
//! | `oci_cache_requests_total` | `route`, `cache`, `code` | every request, when its body ended |
//! | `oci_cache_request_duration_seconds` | `route` | arrival to the last body byte |
//! | `oci_cache_served_bytes_total` | `route` | body bytes actually written to clients |
//! | `oci_cache_upstream_requests_total` | `upstream`, `endpoint`, `outcome` | each attempt on an endpoint |
//! | `oci_cache_upstream_request_duration_seconds` | `upstream` | each attempt, until its headers |
//! | `oci_cache_upstream_bytes_total` | `upstream` | body bytes received from upstreams |
//! | `oci_cache_upstream_throttled_total` | `upstream` | 429 answers |
//! | `oci_cache_upstream_queued` | `upstream` | requests waiting for the upstream's budget (concurrency cap, rate) |
//! | `oci_cache_upstream_wait_seconds` | `upstream` | time each request waited for the budget |
//! | `oci_cache_upstream_ratelimit_remaining`, `oci_cache_upstream_ratelimit_limit` | `upstream` | the pull allowance from the upstream's `ratelimit-*` headers, as last answered |
//! | `oci_cache_fills_in_flight` | | blob fills under way |
//! | `oci_cache_fill_resumes_total` | `how` | cut upstream connections a fill continued: `range` (a `206` from the byte reached), or `range_ignored` / `entity_changed` (upstream sent the blob from byte 0 again) |
//! | `oci_cache_fill_refetched_bytes_total` | | bytes before a cut that upstream sent again (restarts) |
//! | `oci_cache_fill_leases_total` | `outcome` | replicas on one bucket: `acquired` (this replica fills), `peer` (streamed from the replica filling it), `takeover` (that replica went away; this one took its lease and went on), `unavailable` (no lease usable: filled alone) |
//! | `oci_cache_coalesced_total` | | requests fed from another request's fetch |
//! | `oci_cache_stale_served_total` | | cached tags served while upstream failed |
//! | `oci_cache_breaker_open` | `endpoint` | 1 while the endpoint's breaker is open |
//! | `oci_cache_storage_bytes`, `oci_cache_storage_objects` | | stored blobs (see below) |
//! | `oci_cache_evictions_total`, `oci_cache_evicted_bytes_total` | | blobs evicted (passes and purges) |
//! | `oci_cache_protected_bytes` | | pinned and hosted blob bytes, as of the last eviction pass |
//! | `oci_cache_protected_over_cap_total` | | passes that found pinned/hosted content alone over the cap (kept) |
//!
//! `cache` is `hit`, `miss`, `coalesced`, `revalidated`, `stale`, or `none`
//! for answers that did not come from the engine (errors, `/v2/`, health).
//! The storage gauges start from one count of the store
//! ([`Metrics::add_stored`], done once at start) and then follow the
//! fills and evictions this process reports, so a scrape never walks the store.

use std::fmt::Write as _;

use oci_cache_core::observe::{
    BreakerEvent, BudgetEvent, EvictionEvent, FillEvent, FillPhase, Observer, RateLimitEvent,
    RequestEvent, UpstreamEvent, UpstreamOutcome,
};
use oci_cache_core::UpstreamErrorKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    cache: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    upstream: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResumeLabels {
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

fn request_histogram() -> Histogram {
    // 1 ms … ~33 s: manifest hits are sub-millisecond, cold layers take seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Prometheus metrics fed by the observer events. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    served_bytes: Family<RouteLabels, Counter>,
    upstream_requests: Family<AttemptLabels, Counter>,
    upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_bytes: Family<UpstreamLabels, Counter>,
    upstream_throttled: Family<UpstreamLabels, Counter>,
    upstream_queued: Family<UpstreamLabels, Gauge>,
    upstream_wait: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    ratelimit_remaining: Family<UpstreamLabels, Gauge>,
    ratelimit_limit: Family<UpstreamLabels, Gauge>,
    fills_in_flight: Gauge,
    fill_resumes: Family<ResumeLabels, Counter>,
    fill_refetched_bytes: Counter,
    fill_leases: Family<LeaseLabels, Counter>,
    coalesced: Counter,
    stale_served: Counter,
    breaker_open: Family<EndpointLabels, Gauge>,
    storage_bytes: Gauge,
    storage_objects: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    protected_bytes: Gauge,
    protected_over_cap: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::new_with_constructor(request_histogram as fn() -> Histogram);
        let served_bytes = Family::<RouteLabels, Counter>::default();
        let upstream_requests = Family::<AttemptLabels, Counter>::default();
        let upstream_duration =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        let upstream_bytes = Family::<UpstreamLabels, Counter>::default();
        let upstream_throttled = Family::<UpstreamLabels, Counter>::default();
        let upstream_queued = Family::<UpstreamLabels, Gauge>::default();
        let upstream_wait = Family::new_with_constructor(request_histogram as fn() -> Histogram);
        let ratelimit_remaining = Family::<UpstreamLabels, Gauge>::default();
        let ratelimit_limit = Family::<UpstreamLabels, Gauge>::default();
        let fills_in_flight = Gauge::default();
        let fill_resumes = Family::<ResumeLabels, Counter>::default();
        let fill_refetched_bytes = Counter::default();
        let fill_leases = Family::<LeaseLabels, Counter>::default();
        let coalesced = Counter::default();
        let stale_served = Counter::default();
        let breaker_open = Family::<EndpointLabels, Gauge>::default();
        let storage_bytes = Gauge::default();
        let storage_objects = Gauge::default();
        let evictions = Counter::default();
        let evicted_bytes = Counter::default();
        let protected_bytes = Gauge::default();
        let protected_over_cap = Counter::default();

        registry.register(
            "oci_cache_requests",
            "Requests answered, by route, cache result and status code",
            requests.clone(),
        );
        registry.register(
            "oci_cache_request_duration_seconds",
            "Time from a request's arrival to the last byte of its body",
            request_duration.clone(),
        );
        registry.register(
            "oci_cache_served_bytes",
            "Body bytes written to clients",
            served_bytes.clone(),
        );
        registry.register(
            "oci_cache_upstream_requests",
            "Attempts on upstream endpoints, by outcome",
            upstream_requests.clone(),
        );
        registry.register(
            "oci_cache_upstream_request_duration_seconds",
            "Time from an upstream request to its response headers",
            upstream_duration.clone(),
        );
        registry.register(
            "oci_cache_upstream_bytes",
            "Body bytes received from upstreams",
            upstream_bytes.clone(),
        );
        registry.register(
            "oci_cache_upstream_throttled",
            "Upstream answers 429 Too Many Requests",
            upstream_throttled.clone(),
        );
        registry.register(
            "oci_cache_upstream_queued",
            "Requests waiting for an upstream's budget (concurrency cap and rate)",
            upstream_queued.clone(),
        );
        registry.register(
            "oci_cache_upstream_wait_seconds",
            "Time requests waited for an upstream's budget",
            upstream_wait.clone(),
        );
        registry.register(
            "oci_cache_upstream_ratelimit_remaining",
            "Requests left in the upstream's rate-limit window, as it last said",
            ratelimit_remaining.clone(),
        );
        registry.register(
            "oci_cache_upstream_ratelimit_limit",
            "Requests the upstream allows per rate-limit window, as it last said",
            ratelimit_limit.clone(),
        );
        registry.register(
            "oci_cache_fills_in_flight",
            "Blob fills under way",
            fills_in_flight.clone(),
        );
        registry.register(
            "oci_cache_fill_resumes",
            "Cut upstream connections a blob fill continued, by how upstream answered",
            fill_resumes.clone(),
        );
        registry.register(
            "oci_cache_fill_refetched_bytes",
            "Bytes before a cut that upstream sent again because it restarted from byte 0",
            fill_refetched_bytes.clone(),
        );
        registry.register(
            "oci_cache_fill_leases",
            "Blob fills on a bucket shared by several replicas, by what happened to the fill lease",
            fill_leases.clone(),
        );
        registry.register(
            "oci_cache_coalesced",
            "Requests fed from another request's upstream fetch",
            coalesced.clone(),
        );
        registry.register(
            "oci_cache_stale_served",
            "Cached tags served because upstream failed",
            stale_served.clone(),
        );
        registry.register(
            "oci_cache_breaker_open",
            "1 while an endpoint's circuit breaker is open",
            breaker_open.clone(),
        );
        registry.register(
            "oci_cache_storage_bytes",
            "Bytes of stored blobs",
            storage_bytes.clone(),
        );
        registry.register(
            "oci_cache_storage_objects",
            "Stored blobs",
            storage_objects.clone(),
        );
        registry.register(
            "oci_cache_evictions",
            "Blobs evicted to keep storage under its cap",
            evictions.clone(),
        );
        registry.register(
            "oci_cache_evicted_bytes",
            "Bytes of blobs evicted",
            evicted_bytes.clone(),
        );
        registry.register(
            "oci_cache_protected_bytes",
            "Pinned and hosted blob bytes, never evicted (as of the last eviction pass)",
            protected_bytes.clone(),
        );
        registry.register(
            "oci_cache_protected_over_cap",
            "Eviction passes that found pinned and hosted content alone over max_size (kept)",
            protected_over_cap.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            served_bytes,
            upstream_requests,
            upstream_duration,
            upstream_bytes,
            upstream_throttled,
            upstream_queued,
            upstream_wait,
            ratelimit_remaining,
            ratelimit_limit,
            fills_in_flight,
            fill_resumes,
            fill_refetched_bytes,
            fill_leases,
            coalesced,
            stale_served,
            breaker_open,
            storage_bytes,
            storage_objects,
            evictions,
            evicted_bytes,
            protected_bytes,
            protected_over_cap,
        }
    }

    /// The exposition, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            // Writing to a String only fails on a formatter bug; say so in the scrape.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// Adds what was already stored (one count of the store, at start) to
    /// the storage gauges. Added, not set, so fills that finish while the
    /// count runs are not lost.
    pub fn add_stored(&self, bytes: u64, objects: u64) {
        self.storage_bytes
            .inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.storage_objects
            .inc_by(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Records blobs removed from storage (eviction, purge).
    pub fn record_eviction(&self, blobs: u64, bytes: u64) {
        self.evictions.inc_by(blobs);
        self.evicted_bytes.inc_by(bytes);
        self.storage_objects
            .dec_by(i64::try_from(blobs).unwrap_or(i64::MAX));
        self.storage_bytes
            .dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

impl Observer for Metrics {
    fn budget(&self, event: &BudgetEvent) {
        let upstream = UpstreamLabels {
            upstream: event.upstream.to_string(),
        };
        self.upstream_queued
            .get_or_create(&upstream)
            .set(i64::try_from(event.queued).unwrap_or(i64::MAX));
        if let Some(waited) = event.waited {
            self.upstream_wait
                .get_or_create(&upstream)
                .observe(waited.as_secs_f64());
        }
    }

    fn rate_limit(&self, event: &RateLimitEvent) {
        let upstream = UpstreamLabels {
            upstream: event.upstream.to_string(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(remaining) = event.remaining {
            self.ratelimit_remaining
                .get_or_create(&upstream)
                .set(gauge(remaining));
        }
        if let Some(limit) = event.limit {
            self.ratelimit_limit
                .get_or_create(&upstream)
                .set(gauge(limit));
        }
    }

    fn request(&self, event: &RequestEvent) {
        let cache = event.cache.map_or("none", |c| c.as_str());
        self.requests
            .get_or_create(&RequestLabels {
                route: event.route,
                cache,
                code: event.status,
            })
            .inc();
        let route = RouteLabels { route: event.route };
        self.request_duration
            .get_or_create(&route)
            .observe(event.duration.as_secs_f64());
        self.served_bytes
            .get_or_create(&route)
            .inc_by(event.bytes_sent);
        match cache {
            "coalesced" => {
                self.coalesced.inc();
            }
            "stale" => {
                self.stale_served.inc();
            }
            _ => {}
        }
    }

    fn upstream(&self, event: &UpstreamEvent) {
        let upstream = UpstreamLabels {
            upstream: event.upstream.to_string(),
        };
        self.upstream_bytes
            .get_or_create(&upstream)
            .inc_by(event.bytes);
        if event.body_ended {
            // The attempt itself was counted when its headers arrived.
            return;
        }
        self.upstream_requests
            .get_or_create(&AttemptLabels {
                upstream: upstream.upstream.clone(),
                endpoint: event.endpoint.clone(),
                outcome: event.outcome.as_str(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&upstream)
            .observe(event.duration.as_secs_f64());
        if event.outcome == UpstreamOutcome::Failed(UpstreamErrorKind::TooManyRequests) {
            self.upstream_throttled.get_or_create(&upstream).inc();
        }
    }

    fn fill(&self, event: &FillEvent) {
        match &event.phase {
            FillPhase::Started => {
                self.fills_in_flight.inc();
            }
            FillPhase::Stored { bytes } => {
                self.fills_in_flight.dec();
                self.storage_objects.inc();
                self.storage_bytes
                    .inc_by(i64::try_from(*bytes).unwrap_or(i64::MAX));
            }
            FillPhase::Resumed { .. } => {
                self.fill_resumes
                    .get_or_create(&ResumeLabels { how: "range" })
                    .inc();
            }
            FillPhase::Restarted { offset, reason } => {
                self.fill_resumes
                    .get_or_create(&ResumeLabels {
                        how: reason.as_str(),
                    })
                    .inc();
                self.fill_refetched_bytes.inc_by(*offset);
            }
            FillPhase::Lease { outcome } => {
                self.fill_leases
                    .get_or_create(&LeaseLabels {
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
            _ => {
                self.fills_in_flight.dec();
            }
        }
    }

    fn eviction(&self, event: &EvictionEvent) {
        self.record_eviction(event.blobs, event.bytes);
        if event.protected_bytes > 0 || event.protected_over_cap {
            self.protected_bytes
                .set(i64::try_from(event.protected_bytes).unwrap_or(i64::MAX));
        }
        if event.protected_over_cap {
            self.protected_over_cap.inc();
        }
    }

    fn breaker(&self, event: &BreakerEvent) {
        self.breaker_open
            .get_or_create(&EndpointLabels {
                endpoint: event.endpoint.clone(),
            })
            .set(i64::from(event.open));
    }
}

/// A service that answers only `GET /metrics` (and `/healthz`), for a
/// separate metrics listener (`--metrics-listen`); everything else is 404.
#[derive(Debug, Clone)]
pub struct MetricsService {
    metrics: std::sync::Arc<Metrics>,
}

impl MetricsService {
    /// Serves `metrics`.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        MetricsService { metrics }
    }

    fn answer(&self, method: &http::Method, path: &str) -> http::Response<crate::Body> {
        use http::{Method, StatusCode};
        let read_only = method == Method::GET || method == Method::HEAD;
        let (status, content_type, body) = match path {
            "/metrics" if read_only => (StatusCode::OK, CONTENT_TYPE, self.metrics.encode()),
            "/healthz" if read_only => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n".to_owned(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "this listener serves only GET /metrics and /healthz\n".to_owned(),
            ),
        };
        let len = body.len();
        let body = if method == Method::HEAD {
            crate::body::empty()
        } else {
            crate::body::full(bytes::Bytes::from(body))
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        response
    }
}

impl<B> hyper::service::Service<http::Request<B>> for MetricsService {
    type Response = http::Response<crate::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn call(&self, request: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer(request.method(), request.uri().path())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
