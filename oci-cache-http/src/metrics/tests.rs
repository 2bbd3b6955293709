use std::time::Duration;

use oci_cache_core::digest::Digest;
use oci_cache_core::observe::{CacheOutcome, RestartReason, UpstreamOperation};
use oci_cache_core::reference::Registry;

use super::*;

fn request(
    route: &'static str,
    cache: Option<CacheOutcome>,
    status: u16,
    bytes: u64,
) -> RequestEvent {
    RequestEvent {
        method: "GET".into(),
        path: "/v2/x".into(),
        route,
        upstream: None,
        cache,
        status,
        bytes_sent: bytes,
        duration: Duration::from_millis(3),
        completed: true,
    }
}

fn attempt(outcome: UpstreamOutcome, bytes: u64, body_ended: bool) -> UpstreamEvent {
    UpstreamEvent {
        upstream: Registry::new("docker.io").unwrap(),
        endpoint: "http://127.0.0.1:5100".into(),
        operation: UpstreamOperation::BlobGet,
        outcome,
        bytes,
        duration: Duration::from_millis(5),
        body_ended,
    }
}

/// Samples of the exposition, read back with a Prometheus text parser.
fn samples(metrics: &Metrics) -> Vec<prometheus_parse::Sample> {
    let text = metrics.encode();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap().samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a single value"),
        })
        .collect();
    // Labels not named are summed over, as a PromQL `sum` would.
    assert!(!matching.is_empty(), "{name} {labels:?} in {samples:?}");
    matching.iter().sum()
}

#[test]
fn events_become_the_documented_families() {
    let m = Metrics::new();
    m.request(&request("blob", Some(CacheOutcome::Miss), 200, 1000));
    m.request(&request("blob", Some(CacheOutcome::Hit), 200, 1000));
    m.request(&request("blob", Some(CacheOutcome::Coalesced), 200, 400));
    m.request(&request("manifest", Some(CacheOutcome::Stale), 200, 10));
    m.request(&request("manifest", None, 404, 0));
    m.upstream(&attempt(UpstreamOutcome::Ok, 0, false));
    m.upstream(&attempt(UpstreamOutcome::Ok, 1000, true));
    m.upstream(&attempt(
        UpstreamOutcome::Failed(UpstreamErrorKind::TooManyRequests),
        0,
        false,
    ));
    let digest = Digest::sha256_of(b"x");
    let upstream = Registry::new("docker.io").unwrap();
    m.fill(&FillEvent::new(
        digest.clone(),
        upstream.clone(),
        FillPhase::Started,
    ));
    m.fill(&FillEvent::new(
        digest.clone(),
        upstream.clone(),
        FillPhase::Started,
    ));
    m.fill(&FillEvent::new(
        digest.clone(),
        upstream.clone(),
        FillPhase::Stored { bytes: 1000 },
    ));
    m.breaker(&BreakerEvent {
        endpoint: "http://127.0.0.1:5100".into(),
        open: true,
    });
    m.add_stored(5000, 3);

    let s = samples(&m);
    let req = "oci_cache_requests_total";
    assert_eq!(
        value(
            &s,
            req,
            &[("route", "blob"), ("cache", "miss"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            req,
            &[("route", "blob"), ("cache", "hit"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            req,
            &[("route", "manifest"), ("cache", "none"), ("code", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "oci_cache_served_bytes_total", &[("route", "blob")]),
        2400.0
    );
    assert_eq!(value(&s, "oci_cache_coalesced_total", &[]), 1.0);
    assert_eq!(value(&s, "oci_cache_stale_served_total", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "oci_cache_upstream_bytes_total",
            &[("upstream", "docker.io")]
        ),
        1000.0
    );
    assert_eq!(
        value(
            &s,
            "oci_cache_upstream_requests_total",
            &[("outcome", "ok")]
        ),
        1.0,
        "the body-ended event is not a second attempt"
    );
    assert_eq!(
        value(
            &s,
            "oci_cache_upstream_requests_total",
            &[("outcome", "too_many_requests")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "oci_cache_upstream_throttled_total",
            &[("upstream", "docker.io")]
        ),
        1.0
    );
    assert_eq!(value(&s, "oci_cache_fills_in_flight", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "oci_cache_breaker_open",
            &[("endpoint", "http://127.0.0.1:5100")]
        ),
        1.0
    );
    assert_eq!(value(&s, "oci_cache_storage_bytes", &[]), 6000.0);
    assert_eq!(value(&s, "oci_cache_storage_objects", &[]), 4.0);
    assert_eq!(value(&s, "oci_cache_evictions_total", &[]), 0.0);

    m.eviction(&EvictionEvent {
        blobs: 2,
        bytes: 1500,
        stored_bytes: 4500,
        protected_bytes: 3000,
        protected_over_cap: true,
    });
    let s = samples(&m);
    assert_eq!(value(&s, "oci_cache_evictions_total", &[]), 2.0);
    assert_eq!(value(&s, "oci_cache_evicted_bytes_total", &[]), 1500.0);
    assert_eq!(value(&s, "oci_cache_storage_bytes", &[]), 4500.0);
    assert_eq!(value(&s, "oci_cache_storage_objects", &[]), 2.0);
    assert_eq!(value(&s, "oci_cache_protected_bytes", &[]), 3000.0);
    assert_eq!(value(&s, "oci_cache_protected_over_cap_total", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "oci_cache_request_duration_seconds_count",
            &[("route", "blob")]
        ),
        3.0
    );
}

#[test]
fn resumed_and_restarted_fills_are_counted_and_stay_in_flight() {
    let m = Metrics::new();
    let digest = Digest::sha256_of(b"x");
    let upstream = Registry::new("docker.io").unwrap();
    let fill = |phase| FillEvent::new(digest.clone(), upstream.clone(), phase);
    m.fill(&fill(FillPhase::Started));
    m.fill(&fill(FillPhase::Resumed { offset: 100 }));
    m.fill(&fill(FillPhase::Resumed { offset: 200 }));
    m.fill(&fill(FillPhase::Restarted {
        offset: 300,
        reason: RestartReason::RangeIgnored,
    }));
    m.fill(&fill(FillPhase::Restarted {
        offset: 400,
        reason: RestartReason::EntityChanged,
    }));
    let s = samples(&m);
    let resumes = "oci_cache_fill_resumes_total";
    assert_eq!(value(&s, resumes, &[("how", "range")]), 2.0);
    assert_eq!(value(&s, resumes, &[("how", "range_ignored")]), 1.0);
    assert_eq!(value(&s, resumes, &[("how", "entity_changed")]), 1.0);
    assert_eq!(
        value(&s, "oci_cache_fill_refetched_bytes_total", &[]),
        700.0
    );
    assert_eq!(
        value(&s, "oci_cache_fills_in_flight", &[]),
        1.0,
        "a resume is not the end of the fill"
    );
}

#[test]
fn lease_outcomes_are_counted_and_a_relay_ends_the_fill() {
    use oci_cache_core::observe::LeaseOutcome;
    let m = Metrics::new();
    let digest = Digest::sha256_of(b"x");
    let upstream = Registry::new("docker.io").unwrap();
    let fill = |phase| FillEvent::new(digest.clone(), upstream.clone(), phase);
    m.fill(&fill(FillPhase::Started));
    m.fill(&fill(FillPhase::Lease {
        outcome: LeaseOutcome::Peer,
    }));
    m.fill(&fill(FillPhase::Lease {
        outcome: LeaseOutcome::Takeover,
    }));
    assert_eq!(
        value(&samples(&m), "oci_cache_fills_in_flight", &[]),
        1.0,
        "a lease outcome is not the end of the fill"
    );
    m.fill(&fill(FillPhase::Relayed { bytes: 10 }));
    let s = samples(&m);
    let leases = "oci_cache_fill_leases_total";
    assert_eq!(value(&s, leases, &[("outcome", "peer")]), 1.0);
    assert_eq!(value(&s, leases, &[("outcome", "takeover")]), 1.0);
    assert_eq!(value(&s, "oci_cache_fills_in_flight", &[]), 0.0);
}

fn mirrors(names: &[&str]) -> MirrorConfig {
    let upstreams = names
        .iter()
        .map(|n| {
            oci_cache_core::mirror::UpstreamConfig::new(
                Registry::new(n).unwrap(),
                format!("https://{n}"),
            )
        })
        .collect();
    MirrorConfig::new(upstreams, Registry::new(names[0]).unwrap()).unwrap()
}

fn routed(
    route: &'static str,
    upstream: &str,
    method: &str,
    cache: Option<CacheOutcome>,
    status: u16,
    bytes: u64,
) -> RequestEvent {
    RequestEvent {
        method: method.into(),
        upstream: Some(Registry::new(upstream).unwrap()),
        ..request(route, cache, status, bytes)
    }
}

#[test]
fn requests_and_bytes_carry_a_bounded_upstream_label() {
    let m = Metrics::new();
    m.label_upstreams(&mirrors(&["docker.io", "ghcr.io"]));
    m.request(&routed(
        "blob",
        "docker.io",
        "GET",
        Some(CacheOutcome::Miss),
        200,
        700,
    ));
    m.request(&routed(
        "blob",
        "docker.io",
        "GET",
        Some(CacheOutcome::Hit),
        200,
        700,
    ));
    m.request(&routed(
        "blob",
        "ghcr.io",
        "GET",
        Some(CacheOutcome::Hit),
        200,
        50,
    ));
    // Not configured (allow_any_upstream): one label for all such names.
    m.request(&routed(
        "blob",
        "a.example",
        "GET",
        Some(CacheOutcome::Miss),
        200,
        1,
    ));
    m.request(&routed(
        "blob",
        "b.example",
        "GET",
        Some(CacheOutcome::Miss),
        200,
        1,
    ));
    m.request(&request("hosted_blob", None, 200, 9));
    m.request(&request("ping", None, 200, 2));
    m.upstream(&UpstreamEvent {
        upstream: Registry::new("z.example").unwrap(),
        ..attempt(UpstreamOutcome::Ok, 5, true)
    });
    let s = samples(&m);
    let requests = "oci_cache_requests_total";
    assert_eq!(value(&s, requests, &[("upstream", "docker.io")]), 2.0);
    assert_eq!(
        value(&s, requests, &[("upstream", "docker.io"), ("cache", "hit")]),
        1.0
    );
    assert_eq!(value(&s, requests, &[("upstream", "ghcr.io")]), 1.0);
    assert_eq!(value(&s, requests, &[("upstream", "other")]), 2.0);
    assert_eq!(value(&s, requests, &[("upstream", "hosted")]), 1.0);
    assert_eq!(value(&s, requests, &[("upstream", "none")]), 1.0);
    let served = "oci_cache_served_bytes_total";
    assert_eq!(
        value(&s, served, &[("upstream", "docker.io"), ("cache", "hit")]),
        700.0
    );
    assert_eq!(
        value(&s, served, &[("upstream", "docker.io"), ("cache", "miss")]),
        700.0
    );
    assert_eq!(value(&s, served, &[("upstream", "ghcr.io")]), 50.0);
    assert_eq!(
        value(
            &s,
            "oci_cache_upstream_bytes_total",
            &[("upstream", "other")]
        ),
        5.0
    );
    assert!(
        !m.encode().contains("example"),
        "names outside the configuration never become labels"
    );
}

#[test]
fn manifest_gets_answered_without_an_upstream_get_are_counted_per_upstream() {
    let m = Metrics::new();
    m.label_upstreams(&mirrors(&["docker.io", "ghcr.io"]));
    for cache in [
        CacheOutcome::Hit,
        CacheOutcome::Revalidated,
        CacheOutcome::Stale,
        CacheOutcome::Coalesced,
    ] {
        m.request(&routed(
            "manifest",
            "docker.io",
            "GET",
            Some(cache),
            200,
            10,
        ));
    }
    // A GET upstream, a HEAD (not what pull limits count), a failure, a blob.
    m.request(&routed(
        "manifest",
        "docker.io",
        "GET",
        Some(CacheOutcome::Miss),
        200,
        10,
    ));
    m.request(&routed(
        "manifest",
        "docker.io",
        "HEAD",
        Some(CacheOutcome::Hit),
        200,
        0,
    ));
    m.request(&routed("manifest", "docker.io", "GET", None, 404, 0));
    m.request(&routed(
        "blob",
        "docker.io",
        "GET",
        Some(CacheOutcome::Hit),
        200,
        10,
    ));
    m.request(&routed(
        "manifest",
        "ghcr.io",
        "GET",
        Some(CacheOutcome::Hit),
        200,
        10,
    ));
    let s = samples(&m);
    let avoided = "oci_cache_upstream_manifest_gets_avoided_total";
    assert_eq!(value(&s, avoided, &[("upstream", "docker.io")]), 4.0);
    assert_eq!(value(&s, avoided, &[("upstream", "ghcr.io")]), 1.0);
}

#[test]
fn the_cap_build_info_and_process_figures_are_exposed() {
    let m = Metrics::new();
    assert!(
        !m.encode().contains("oci_cache_storage_cap_bytes"),
        "no cap, no sample"
    );
    m.set_storage_cap(Some(50 << 30));
    let s = samples(&m);
    assert_eq!(
        value(&s, "oci_cache_storage_cap_bytes", &[]),
        (50u64 << 30) as f64
    );
    assert_eq!(
        value(
            &s,
            "oci_cache_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    if cfg!(target_os = "linux") {
        assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
        assert!(value(&s, "process_open_fds", &[]) >= 3.0);
        let started = value(&s, "process_start_time_seconds", &[]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}

#[test]
fn aborted_multipart_uploads_are_counted_by_reason() {
    use oci_cache_core::observe::{UploadAbortReason, UploadsAbortedEvent};
    let m = Metrics::new();
    m.uploads_aborted(&UploadsAbortedEvent {
        count: 2,
        reason: UploadAbortReason::Stale,
    });
    m.uploads_aborted(&UploadsAbortedEvent {
        count: 1,
        reason: UploadAbortReason::Takeover,
    });
    let s = samples(&m);
    let aborted = "oci_cache_multipart_uploads_aborted_total";
    assert_eq!(value(&s, aborted, &[("reason", "stale")]), 2.0);
    assert_eq!(value(&s, aborted, &[("reason", "takeover")]), 1.0);
}
