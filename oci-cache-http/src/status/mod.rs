//! The status page: `GET /` (HTML a person reads on a laptop or a phone) and
//! `GET /status.json` (the same data for scripts).
//!
//! Counted figures (requests, bytes, the upstreams' pull allowance, disk use,
//! evictions) are read from the [`Metrics`] exposition ([`figures`]), so the
//! page shows exactly what `/metrics` says; what no metric counts (each
//! upstream's last success and error, breakers, fills with their progress,
//! the images pulled) comes from the [`StatusBoard`] and the engine.

mod board;
mod figures;
mod html;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_cache_core::mirror::MirrorConfig;
use serde::Serialize;

pub use board::StatusBoard;

use crate::handlers::Engine;
use crate::metrics::Metrics;
use figures::Sample;
pub(crate) use html::render as render_html;

/// Images listed in each of "most pulled" and "most recent".
const IMAGES_SHOWN: usize = 10;

/// Cache outcomes answered without a new upstream fetch (the hit ratio's
/// numerator; the denominator is every outcome but `none`), as the PromQL in
/// docs/operations.md has it.
const FROM_CACHE: [&str; 4] = ["hit", "revalidated", "stale", "coalesced"];
/// Routes whose body bytes are image content (what the cache saves on).
const CONTENT_ROUTES: [&str; 2] = ["manifest", "blob"];

/// What the status page reads: its board and the metrics (`None`: the page
/// says that metrics are off and counts nothing).
#[derive(Debug, Clone)]
pub(crate) struct StatusSource {
    pub(crate) board: Arc<StatusBoard>,
    pub(crate) metrics: Option<Arc<Metrics>>,
}

/// Everything the page shows; `/status.json` is this, serialized.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) version: &'static str,
    /// Unix seconds.
    pub(crate) started_at: u64,
    pub(crate) uptime_seconds: u64,
    /// Whether the counted figures are there (metrics are on).
    pub(crate) metrics: bool,
    pub(crate) requests: Requests,
    pub(crate) bytes: Bytes,
    pub(crate) upstreams: Vec<UpstreamStatus>,
    pub(crate) disk: Disk,
    pub(crate) fills: Fills,
    pub(crate) most_pulled: Vec<Image>,
    pub(crate) most_recent: Vec<Image>,
}

/// Client requests answered.
#[derive(Debug, Serialize)]
pub(crate) struct Requests {
    pub(crate) total: u64,
    /// By cache outcome (`hit`, `miss`, `coalesced`, `revalidated`, `stale`, `none`).
    pub(crate) by_cache: BTreeMap<String, u64>,
    /// Manifest and blob requests answered without a new upstream fetch,
    /// over those answered from the cache or upstream; `None` before any.
    pub(crate) hit_ratio: Option<f64>,
}

/// Image bytes (manifests and blobs) served, and bytes fetched upstream.
#[derive(Debug, Serialize)]
pub(crate) struct Bytes {
    pub(crate) served: u64,
    pub(crate) fetched: u64,
    /// Served minus fetched: what did not cross the upstream link.
    pub(crate) saved: u64,
}

/// One configured upstream.
#[derive(Debug, Serialize)]
pub(crate) struct UpstreamStatus {
    pub(crate) name: String,
    pub(crate) default: bool,
    pub(crate) endpoints: Vec<EndpointStatus>,
    /// Unix seconds of the last answer (a 404 is an answer).
    pub(crate) last_success: Option<u64>,
    pub(crate) last_error: Option<ErrorStatus>,
    /// Attempts by outcome (`ok`, `not_found`, `unavailable`, …).
    pub(crate) attempts: BTreeMap<String, u64>,
    /// This upstream's share of [`Requests::hit_ratio`]: its blob and
    /// manifest requests answered from the cache (`None`: none yet).
    pub(crate) hit_ratio: Option<f64>,
    pub(crate) bytes_fetched: u64,
    pub(crate) throttled: u64,
    /// The pull allowance, when the upstream reports one (Docker Hub does).
    pub(crate) ratelimit: Option<RateLimit>,
}

/// One endpoint of an upstream's chain.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointStatus {
    pub(crate) url: String,
    pub(crate) breaker_open: bool,
}

/// An upstream's last failed attempt.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorStatus {
    pub(crate) at: u64,
    pub(crate) endpoint: String,
    pub(crate) kind: &'static str,
}

/// `ratelimit-remaining` / `ratelimit-limit`, as the upstream last said.
#[derive(Debug, Serialize)]
pub(crate) struct RateLimit {
    pub(crate) remaining: Option<u64>,
    pub(crate) limit: Option<u64>,
}

/// Storage against its cap, and what eviction did.
#[derive(Debug, Serialize)]
pub(crate) struct Disk {
    pub(crate) stored_bytes: u64,
    pub(crate) stored_objects: u64,
    /// `max_size`; `None`: no cap.
    pub(crate) max_size: Option<u64>,
    pub(crate) evictions: u64,
    pub(crate) evicted_bytes: u64,
    pub(crate) protected_bytes: u64,
    pub(crate) protected_over_cap: u64,
}

/// Blob fills under way.
#[derive(Debug, Serialize)]
pub(crate) struct Fills {
    pub(crate) in_flight: u64,
    pub(crate) list: Vec<Fill>,
}

/// One fill under way.
#[derive(Debug, Serialize)]
pub(crate) struct Fill {
    pub(crate) digest: String,
    pub(crate) upstream: Option<String>,
    pub(crate) received: u64,
    pub(crate) size: Option<u64>,
    pub(crate) started_at: Option<u64>,
}

/// One image (upstream and repository).
#[derive(Debug, Serialize)]
pub(crate) struct Image {
    pub(crate) name: String,
    pub(crate) pulls: u64,
    pub(crate) last_reference: String,
    pub(crate) last_pulled: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl StatusSource {
    /// The status as of now.
    pub(crate) fn snapshot(&self, engine: &Engine, mirrors: &MirrorConfig) -> Status {
        let samples = self
            .metrics
            .as_ref()
            .map(|m| figures::parse(&m.encode()))
            .unwrap_or_default();
        let s = &samples;
        let (started_at, uptime) = self.board.uptime();
        let by_cache = by_label(s, "oci_cache_requests_total", "cache", |_| true);
        let served = figures::sum(s, "oci_cache_served_bytes_total", is_content);
        let fetched = figures::sum(s, "oci_cache_upstream_bytes_total", |_| true);
        let gauge = |name: &str| figures::sum(s, name, |_| true);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_at: unix(started_at),
            uptime_seconds: uptime.as_secs(),
            metrics: self.metrics.is_some(),
            requests: Requests {
                total: by_cache.values().sum(),
                hit_ratio: hit_ratio(s, |_| true),
                by_cache,
            },
            bytes: Bytes {
                served,
                fetched,
                saved: served.saturating_sub(fetched),
            },
            upstreams: mirrors
                .upstreams
                .iter()
                .map(|u| self.upstream(s, u, u.name == mirrors.default_upstream))
                .collect(),
            disk: Disk {
                stored_bytes: gauge("oci_cache_storage_bytes"),
                stored_objects: gauge("oci_cache_storage_objects"),
                max_size: engine.options().max_size,
                evictions: gauge("oci_cache_evictions_total"),
                evicted_bytes: gauge("oci_cache_evicted_bytes_total"),
                protected_bytes: gauge("oci_cache_protected_bytes"),
                protected_over_cap: gauge("oci_cache_protected_over_cap_total"),
            },
            fills: Fills {
                in_flight: gauge("oci_cache_fills_in_flight"),
                list: engine
                    .fills_in_progress()
                    .into_iter()
                    .map(|f| {
                        let digest = f.digest.to_string();
                        let started = self.board.fill_started(&digest);
                        Fill {
                            upstream: started.as_ref().map(|(u, _)| u.clone()),
                            started_at: started.map(|(_, t)| unix(t)),
                            digest,
                            received: f.received,
                            size: f.size,
                        }
                    })
                    .collect(),
            },
            most_pulled: images(self.board.most_pulled(IMAGES_SHOWN)),
            most_recent: images(self.board.most_recent(IMAGES_SHOWN)),
        }
    }

    fn upstream(
        &self,
        s: &[Sample],
        config: &oci_cache_core::mirror::UpstreamConfig,
        default: bool,
    ) -> UpstreamStatus {
        let name = config.name.to_string();
        let health = self.board.upstream(&name);
        let mut urls: Vec<String> = config.chain().iter().map(|e| e.url.clone()).collect();
        for seen in &health.endpoints {
            if !urls.contains(seen) {
                urls.push(seen.clone());
            }
        }
        let this = |x: &Sample| x.label("upstream") == Some(name.as_str());
        let attempts = by_label(s, "oci_cache_upstream_requests_total", "outcome", this);
        let remaining = figures::get(
            s,
            "oci_cache_upstream_ratelimit_remaining",
            "upstream",
            &name,
        );
        let limit = figures::get(s, "oci_cache_upstream_ratelimit_limit", "upstream", &name);
        UpstreamStatus {
            endpoints: urls
                .into_iter()
                .map(|url| EndpointStatus {
                    breaker_open: self.board.breaker_open(&url),
                    url,
                })
                .collect(),
            last_success: health.last_success.map(unix),
            last_error: health.last_error.map(|e| ErrorStatus {
                at: unix(e.at),
                endpoint: e.endpoint,
                kind: e.kind,
            }),
            attempts,
            hit_ratio: hit_ratio(s, this),
            bytes_fetched: figures::sum(s, "oci_cache_upstream_bytes_total", this),
            throttled: figures::sum(s, "oci_cache_upstream_throttled_total", this),
            ratelimit: (remaining.is_some() || limit.is_some())
                .then_some(RateLimit { remaining, limit }),
            name,
            default,
        }
    }
}

/// A sample of a blob or manifest request.
fn is_content(x: &Sample) -> bool {
    x.label("route")
        .is_some_and(|r| CONTENT_ROUTES.contains(&r))
}

/// Blob and manifest requests answered without a new upstream fetch, over
/// all those the cache answered, among the requests `keep` passes (`None`:
/// none yet).
fn hit_ratio(s: &[Sample], keep: impl Fn(&Sample) -> bool) -> Option<f64> {
    let by_cache = by_label(s, "oci_cache_requests_total", "cache", |x| {
        is_content(x) && keep(x)
    });
    let from_cache: u64 = FROM_CACHE.iter().filter_map(|c| by_cache.get(*c)).sum();
    let answered: u64 = by_cache
        .iter()
        .filter(|(c, _)| c.as_str() != "none")
        .map(|(_, n)| n)
        .sum();
    (answered > 0).then(|| from_cache as f64 / answered as f64)
}

/// Sums the samples named `name` that pass `keep` by the value of `label`.
fn by_label(
    s: &[Sample],
    name: &str,
    label: &str,
    keep: impl Fn(&Sample) -> bool,
) -> BTreeMap<String, u64> {
    s.iter()
        .filter(|x| x.name == name && keep(x))
        .fold(BTreeMap::new(), |mut by, x| {
            if let Some(v) = x.label(label) {
                *by.entry(v.to_owned()).or_insert(0) += x.value.max(0.0) as u64;
            }
            by
        })
}

fn images(list: Vec<(String, board::ImageUse)>) -> Vec<Image> {
    list.into_iter()
        .map(|(name, u)| Image {
            name,
            pulls: u.pulls,
            last_reference: u.last_reference.to_string(),
            last_pulled: unix(u.last_pulled),
        })
        .collect()
}
