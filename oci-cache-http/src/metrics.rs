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
//! | `oci_cache_requests_total` | `route`, `upstream`, `cache`, `code` | every request, when its body ended |
//! | `oci_cache_request_duration_seconds` | `route` | arrival to the last body byte |
//! | `oci_cache_served_bytes_total` | `route`, `upstream`, `cache` | body bytes actually written to clients |
//! | `oci_cache_upstream_manifest_gets_avoided_total` | `upstream` | manifest GETs answered without an upstream GET |
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
//! | `oci_cache_fill_leases_total` | `outcome` | replicas on one bucket: `acquired` (this replica fills), `peer` (streamed from the replica filling it), `takeover` (that replica went away; this one took its lease and went on), `unavailable` (no lease usable: filled alone), `bad_peer` (the holder sent wrong bytes before: filled alone) |
//! | `oci_cache_multipart_uploads_aborted_total` | `reason` | incomplete S3 multipart uploads a dead writer left, aborted: `takeover` (by the replica that took its fill over), `stale` (marker untouched for the bound, at start) |
//! | `oci_cache_coalesced_total` | | requests fed from another request's fetch |
//! | `oci_cache_stale_served_total` | | cached tags served while upstream failed |
//! | `oci_cache_breaker_open` | `endpoint` | 1 while the endpoint's breaker is open |
//! | `oci_cache_storage_bytes`, `oci_cache_storage_objects` | | stored blobs (see below) |
//! | `oci_cache_evictions_total`, `oci_cache_evicted_bytes_total` | | blobs evicted (passes and purges) |
//! | `oci_cache_protected_bytes` | | pinned and hosted blob bytes, as of the last eviction pass |
//! | `oci_cache_protected_over_cap_total` | | passes that found pinned/hosted content alone over the cap (kept) |
//! | `oci_cache_storage_cap_bytes` | | `max_size` (absent without a cap) |
//! | `oci_cache_build_info` | `version`, `os`, `arch` | always 1 |
//! | `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, `process_cpu_seconds_total` | | from `/proc` at each scrape (Linux) |
//!
//! `cache` is `hit`, `miss`, `coalesced`, `revalidated`, `stale`, or `none`
//! for answers that did not come from the engine (errors, `/v2/`, health).
//! `upstream` is a configured upstream's name ([`Metrics::label_upstreams`]),
//! `hosted` for pushed repositories, `none` for requests naming no
//! repository, or `other` (a registry reached through `allow_any_upstream`):
//! bounded, whatever clients ask for.
//! The storage gauges start from one count of the store
//! ([`Metrics::add_stored`], done once at start) and then follow the
//! fills and evictions this process reports, so a scrape never walks the store.

use std::fmt::Write as _;
use std::sync::Arc;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::observe::{
    BreakerEvent, BudgetEvent, EvictionEvent, FillEvent, FillPhase, Observer, RateLimitEvent,
    RequestEvent, UploadsAbortedEvent, UpstreamEvent, UpstreamOutcome,
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

use labels::{UpstreamName, UpstreamNames};

mod labels;
mod scraped;
mod service;

pub use service::MetricsService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    upstream: UpstreamName,
    cache: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabels {
    route: &'static str,
    upstream: UpstreamName,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: UpstreamName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    upstream: UpstreamName,
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
struct AbortLabels {
    reason: &'static str,
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
    served_bytes: Family<ServedLabels, Counter>,
    manifest_gets_avoided: Family<UpstreamLabels, Counter>,
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
    uploads_aborted: Family<AbortLabels, Counter>,
    coalesced: Counter,
    stale_served: Counter,
    breaker_open: Family<EndpointLabels, Gauge>,
    storage_bytes: Gauge,
    storage_objects: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    protected_bytes: Gauge,
    protected_over_cap: Counter,
    upstream_names: UpstreamNames,
    scraped: Arc<scraped::Scraped>,
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
        let served_bytes = Family::<ServedLabels, Counter>::default();
        let manifest_gets_avoided = Family::<UpstreamLabels, Counter>::default();
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
        let uploads_aborted = Family::<AbortLabels, Counter>::default();
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
            "Body bytes written to clients, by route, upstream and cache result",
            served_bytes.clone(),
        );
        registry.register(
            "oci_cache_upstream_manifest_gets_avoided",
            "Manifest GETs answered without a manifest GET upstream (what registries' pull limits count)",
            manifest_gets_avoided.clone(),
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
            "oci_cache_multipart_uploads_aborted",
            "Incomplete multipart uploads a dead writer left in the bucket, aborted",
            uploads_aborted.clone(),
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
        let scraped = Arc::new(scraped::Scraped::default());
        registry.register_collector(Box::new(Arc::clone(&scraped)));
        Metrics {
            registry,
            requests,
            request_duration,
            served_bytes,
            manifest_gets_avoided,
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
            uploads_aborted,
            coalesced,
            stale_served,
            breaker_open,
            storage_bytes,
            storage_objects,
            evictions,
            evicted_bytes,
            protected_bytes,
            protected_over_cap,
            upstream_names: UpstreamNames::default(),
            scraped,
        }
    }

    /// Labels requests and upstream traffic with the upstreams `mirrors`
    /// configures (others: `other`), and no longer with any name a request
    /// carries. [`Mirror::builder`](crate::Mirror::builder) calls it; call
    /// it again after changing the upstreams.
    pub fn label_upstreams(&self, mirrors: &MirrorConfig) {
        self.upstream_names
            .configure(mirrors.upstreams.iter().map(|u| &u.name));
    }

    /// Sets `oci_cache_storage_cap_bytes` (`None`: no cap, no sample).
    /// [`Mirror::builder`](crate::Mirror::builder) sets the engine's `max_size`.
    pub fn set_storage_cap(&self, max_size: Option<u64>) {
        self.scraped.set_cap(max_size);
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

/// Whether a client's manifest GET was answered without a manifest GET
/// upstream: from storage (`hit`; `revalidated` asked with a HEAD, which
/// pull limits such as Docker Hub's do not count; `stale`) or from another
/// request's GET (`coalesced`).
fn avoided_a_manifest_get(event: &RequestEvent) -> bool {
    use oci_cache_core::observe::CacheOutcome::{Coalesced, Hit, Revalidated, Stale};
    event.route == "manifest"
        && event.method == "GET"
        && (200..300).contains(&event.status)
        && matches!(event.cache, Some(Hit | Revalidated | Stale | Coalesced))
}

impl Observer for Metrics {
    fn budget(&self, event: &BudgetEvent) {
        let upstream = UpstreamLabels {
            upstream: self.upstream_names.upstream(&event.upstream),
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
            upstream: self.upstream_names.upstream(&event.upstream),
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
        let upstream = self.upstream_names.of(event.route, event.upstream.as_ref());
        self.request_duration
            .get_or_create(&RouteLabels { route: event.route })
            .observe(event.duration.as_secs_f64());
        self.served_bytes
            .get_or_create(&ServedLabels {
                route: event.route,
                upstream: upstream.clone(),
                cache,
            })
            .inc_by(event.bytes_sent);
        if avoided_a_manifest_get(event) {
            self.manifest_gets_avoided
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.clone(),
                })
                .inc();
        }
        self.requests
            .get_or_create(&RequestLabels {
                route: event.route,
                upstream,
                cache,
                code: event.status,
            })
            .inc();
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
            upstream: self.upstream_names.upstream(&event.upstream),
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

    fn uploads_aborted(&self, event: &UploadsAbortedEvent) {
        self.uploads_aborted
            .get_or_create(&AbortLabels {
                reason: event.reason.as_str(),
            })
            .inc_by(event.count);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
