//! `/metrics` and `/readyz` through the service an embedder builds, and the
//! Grafana dashboard in `deploy/grafana` against the real exposition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use oci_cache_core::digest::Digest;
use oci_cache_core::health::Readiness;
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::observe::{
    BreakerEvent, Observer, RequestEvent, UpstreamEvent, UpstreamOperation, UpstreamOutcome,
};
use oci_cache_core::reference::Registry;
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_core::UpstreamErrorKind;
use oci_cache_http::metrics::Metrics;
use oci_cache_http::{Mirror, OciService, ProxyConfig, UpstreamOptions};

use crate::support::{mirrors, MockRegistry, Reply};

const DASHBOARD: &str = include_str!("../../deploy/grafana/oci-cache.json");

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

async fn fetch(svc: &OciService, uri: &str) -> (u16, String) {
    let response = svc.handle(get(uri)).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The sum of the samples of `name` whose labels include `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap()
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn the_builder_serves_metrics_fed_by_the_same_events() {
    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob.clone()).header("content-length", &blob.len().to_string()));
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let metrics = Arc::new(Metrics::new());
    let svc = Mirror::builder()
        .upstreams(mirrors(&origin.url()))
        .storage(Arc::clone(&storage))
        .upstream_options(UpstreamOptions::default().with_proxy(ProxyConfig::Direct))
        .metrics(Arc::clone(&metrics))
        .readiness(Readiness::spawn(storage, Duration::from_secs(60)))
        .build()
        .unwrap()
        .service();

    let uri = format!("/v2/library/alpine/blobs/{digest}");
    for _ in 0..2 {
        let (status, _) = fetch(&svc, &uri).await;
        assert_eq!(status, 200);
    }
    let (status, text) = fetch(&svc, "/metrics").await;
    assert_eq!(status, 200);
    let len = blob.len() as f64;
    assert_eq!(
        sample(&text, "oci_cache_served_bytes_total", &[("route", "blob")]),
        2.0 * len
    );
    let blob_requests = |cache| {
        sample(
            &text,
            "oci_cache_requests_total",
            &[("route", "blob"), ("cache", cache), ("code", "200")],
        )
    };
    assert_eq!(blob_requests("miss") + blob_requests("hit"), 2.0);
    assert_eq!(blob_requests("hit"), 1.0);
    assert_eq!(sample(&text, "oci_cache_upstream_bytes_total", &[]), len);
    // The embedder reads the same figures without HTTP.
    assert_eq!(
        sample(&metrics.encode(), "oci_cache_upstream_bytes_total", &[]),
        len
    );

    // The first probe runs at once; /readyz answers from it.
    let mut ready = fetch(&svc, "/readyz").await;
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = fetch(&svc, "/readyz").await;
    }
    assert_eq!(ready, (200, "ready\n".to_owned()));

    let (status, _) = fetch(&svc.without_metrics_endpoint(), "/metrics").await;
    assert_eq!(status, 404, "metrics served elsewhere are not served here");
}

#[tokio::test]
async fn without_metrics_the_endpoint_is_unknown_and_readyz_is_ready() {
    let svc = Mirror::builder()
        .upstreams(mirrors("http://127.0.0.1:9"))
        .storage(Arc::new(MemoryStorage::new()))
        .build()
        .unwrap()
        .service();
    assert_eq!(fetch(&svc, "/metrics").await.0, 404);
    assert_eq!(fetch(&svc, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(fetch(&svc, "/healthz").await.0, 200);
}

/// Metrics with one event of each kind, so every family has a sample
/// (families without one are left out of the exposition).
fn busy_metrics() -> Metrics {
    let m = Metrics::new();
    m.request(&RequestEvent {
        method: "GET".into(),
        path: "/v2/x/blobs/sha256:0".into(),
        route: "blob",
        upstream: None,
        cache: Some(CacheOutcome::Hit),
        status: 200,
        bytes_sent: 10,
        duration: Duration::from_millis(1),
        completed: true,
    });
    // An attempt (headers), its body's end, and a 429.
    for (outcome, body_ended) in [
        (UpstreamOutcome::Ok, false),
        (UpstreamOutcome::Ok, true),
        (
            UpstreamOutcome::Failed(UpstreamErrorKind::TooManyRequests),
            false,
        ),
    ] {
        m.upstream(&UpstreamEvent {
            upstream: Registry::new("docker.io").unwrap(),
            endpoint: "http://127.0.0.1:5100".into(),
            operation: UpstreamOperation::BlobGet,
            outcome,
            bytes: 10,
            duration: Duration::from_millis(1),
            body_ended,
        });
    }
    m.breaker(&BreakerEvent {
        endpoint: "http://127.0.0.1:5100".into(),
        open: true,
    });
    m
}

/// Every sample name the exposition can contain: counters get `_total`,
/// histograms `_bucket`, `_sum` and `_count`.
fn exposed_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in busy_metrics().encode().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_parses_and_uses_only_exposed_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Hit ratio",
        "Bytes saved",
        "Upstream latency",
        "Fills in flight",
        "Breaker state",
        "Disk use",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(wanted)),
            "no {wanted:?} panel in {titles:?}"
        );
    }
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    assert!(found.len() >= 10, "{found:?}");
    let exposed = exposed_names();
    let mut used = BTreeSet::new();
    for expr in &found {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("oci_cache_") {
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[start + name.len()..];
            assert!(
                exposed.contains(&name),
                "{name} (in {expr:?}) is not in the exposition: {exposed:?}"
            );
            used.insert(name);
        }
    }
    // Every family the issue names appears on the dashboard.
    for family in [
        "oci_cache_requests_total",
        "oci_cache_served_bytes_total",
        "oci_cache_upstream_bytes_total",
        "oci_cache_upstream_request_duration_seconds_bucket",
        "oci_cache_fills_in_flight",
        "oci_cache_breaker_open",
        "oci_cache_storage_bytes",
    ] {
        assert!(used.contains(family), "{family} not used: {used:?}");
    }
}
