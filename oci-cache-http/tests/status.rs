//! The status page (`/`, `/status.json`; issue 26 item 2): its figures are
//! the `/metrics` figures after real pulls through a scripted registry that
//! reports a pull allowance like Docker Hub; it shows fills in flight and an
//! upstream's last error, and needs a user when client authentication is on.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use oci_cache_core::cache::CacheOptions;
use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::metrics::Metrics;
use oci_cache_http::{Mirror, OciService, ProxyConfig, UpstreamOptions};
use serde_json::Value;

use crate::metrics::sample;
use crate::support::limited::{LimitedRegistry, Limits};
use crate::support::{behind_auth, call, get, mirrors};

const CAP: u64 = 64 * 1024 * 1024;

fn mirror(origin: &str) -> (OciService, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let svc = Mirror::builder()
        .upstreams(mirrors(origin))
        .storage(Arc::new(MemoryStorage::new()))
        .cache_options(CacheOptions::default().with_max_size(CAP))
        .upstream_options(UpstreamOptions::default().with_proxy(ProxyConfig::Direct))
        .metrics(Arc::clone(&metrics))
        .build()
        .unwrap()
        .service();
    (svc, metrics)
}

/// Pulls image `n` as a client does: the manifest by tag, then its blobs.
async fn pull(svc: &OciService, n: usize) {
    let manifest = get(svc, &format!("/v2/library/img{n}/manifests/latest")).await;
    assert_eq!(manifest.status, StatusCode::OK);
    for blob in LimitedRegistry::digests(n).1 {
        let answer = get(svc, &format!("/v2/library/img{n}/blobs/{blob}")).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
}

/// [`sample`] as a whole number (every figure here is one).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sample(text, name, labels) as u64
}

async fn status_json(svc: &OciService) -> Value {
    let answer = get(svc, "/status.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.json()
}

#[tokio::test]
async fn the_figures_are_the_metrics_figures_after_real_pulls() {
    let registry = LimitedRegistry::start(Limits {
        allowance: Some((100, Duration::from_secs(3600))),
        ..Limits::default()
    })
    .await;
    let (svc, _metrics) = mirror(&registry.url());
    pull(&svc, 0).await;
    pull(&svc, 0).await;
    pull(&svc, 1).await;

    let status = status_json(&svc).await;
    let text = String::from_utf8(get(&svc, "/metrics").await.body.to_vec()).unwrap();

    let served = metric(&text, "oci_cache_served_bytes_total", &[("route", "blob")])
        + metric(
            &text,
            "oci_cache_served_bytes_total",
            &[("route", "manifest")],
        );
    let fetched = metric(&text, "oci_cache_upstream_bytes_total", &[]);
    assert!(fetched > 0 && served > fetched, "{served} {fetched}");
    assert_eq!(status["bytes"]["served"], served);
    assert_eq!(status["bytes"]["fetched"], fetched);
    assert_eq!(status["bytes"]["saved"], served - fetched);
    // `/metrics` also counts the `/status.json` request itself, which ended
    // after the snapshot.
    let requests = metric(&text, "oci_cache_requests_total", &[])
        - metric(&text, "oci_cache_requests_total", &[("route", "status")]);
    assert_eq!(status["requests"]["total"], requests);
    let hits = metric(&text, "oci_cache_requests_total", &[("cache", "hit")]);
    let misses = metric(&text, "oci_cache_requests_total", &[("cache", "miss")]);
    assert!(hits > 0 && misses > 0);
    assert_eq!(status["requests"]["by_cache"]["hit"], hits);
    assert_eq!(status["requests"]["by_cache"]["miss"], misses);
    // The hit ratio of docs/operations.md's PromQL: manifests and blobs.
    let content = |cache| {
        metric(
            &text,
            "oci_cache_requests_total",
            &[("route", "blob"), ("cache", cache)],
        ) + metric(
            &text,
            "oci_cache_requests_total",
            &[("route", "manifest"), ("cache", cache)],
        )
    };
    let answered: u64 = ["hit", "miss", "coalesced", "revalidated", "stale"]
        .into_iter()
        .map(content)
        .sum();
    let from_cache =
        content("hit") + content("coalesced") + content("revalidated") + content("stale");
    let ratio = status["requests"]["hit_ratio"].as_f64().unwrap();
    assert!(
        (ratio - from_cache as f64 / answered as f64).abs() < 1e-9,
        "{ratio}"
    );

    let hub = &status["upstreams"][0];
    assert_eq!(hub["name"], "docker.io");
    assert_eq!(hub["default"], true);
    let up = [("upstream", "docker.io")];
    assert_eq!(
        hub["ratelimit"]["remaining"],
        metric(&text, "oci_cache_upstream_ratelimit_remaining", &up)
    );
    assert_eq!(hub["ratelimit"]["limit"], 100);
    assert_eq!(
        hub["attempts"]["ok"],
        metric(
            &text,
            "oci_cache_upstream_requests_total",
            &[("upstream", "docker.io"), ("outcome", "ok")]
        )
    );
    assert_eq!(hub["bytes_fetched"], fetched);
    assert!(hub["last_success"].as_u64().unwrap() > 0);
    assert!(hub["last_error"].is_null());
    assert_eq!(hub["endpoints"][0]["url"], registry.url());
    assert_eq!(hub["endpoints"][0]["breaker_open"], false);
    assert!(
        status["upstreams"][1]["ratelimit"].is_null(),
        "ghcr.io was never asked"
    );

    let disk = &status["disk"];
    assert_eq!(
        disk["stored_bytes"],
        metric(&text, "oci_cache_storage_bytes", &[])
    );
    assert_eq!(
        disk["stored_objects"],
        metric(&text, "oci_cache_storage_objects", &[])
    );
    assert_eq!(disk["max_size"], CAP);
    assert_eq!(disk["evictions"], 0);

    assert_eq!(status["most_pulled"][0]["name"], "docker.io/library/img0");
    assert_eq!(status["most_pulled"][0]["pulls"], 2);
    assert_eq!(status["most_pulled"][1]["name"], "docker.io/library/img1");
    assert_eq!(status["most_pulled"][1]["pulls"], 1);
    assert_eq!(status["most_recent"][0]["name"], "docker.io/library/img1");
    assert_eq!(status["most_recent"][0]["last_reference"], "latest");

    // The page shows the same figures, exactly, beside the rounded text.
    let page = get(&svc, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    for (figure, value) in [
        ("bytes_served", served),
        ("bytes_fetched", fetched),
        ("ratelimit_limit", 100),
        ("max_size", CAP),
    ] {
        let needle = format!("data-figure=\"{figure}\" data-value=\"{value}\"");
        assert!(html.contains(&needle), "{needle} in {html}");
    }
    assert!(html.contains("docker.io/library/img0"));
    // A HEAD has the GET's length and no body; a POST is refused.
    let head = call(&svc, Method::HEAD, "/", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let post = call(&svc, Method::POST, "/status.json", &[]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_fill_under_way_is_listed_with_its_upstream() {
    let registry = LimitedRegistry::start(Limits {
        blob_delay: Duration::from_millis(1500),
        ..Limits::default()
    })
    .await;
    let (svc, _metrics) = mirror(&registry.url());
    let blob = LimitedRegistry::digests(3).1[0].clone();
    let puller = {
        let svc = svc.clone();
        let uri = format!("/v2/library/img3/blobs/{blob}");
        tokio::spawn(async move { get(&svc, &uri).await.status })
    };
    let mut fills = Value::Null;
    for _ in 0..100 {
        fills = status_json(&svc).await["fills"].clone();
        if fills["in_flight"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fills["in_flight"], 1, "{fills}");
    assert_eq!(fills["list"][0]["digest"], blob.to_string());
    assert_eq!(fills["list"][0]["upstream"], "docker.io");
    assert_eq!(puller.await.unwrap(), StatusCode::OK);
    let fills = &status_json(&svc).await["fills"];
    assert_eq!(fills["in_flight"], 0);
    assert_eq!(fills["list"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_shows_its_last_error() {
    // Nothing listens on port 9 (discard) here.
    let (svc, _metrics) = mirror("http://127.0.0.1:9");
    let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
    assert!(answer.status.is_server_error(), "{}", answer.status);
    let status = status_json(&svc).await;
    let hub = &status["upstreams"][0];
    assert!(hub["last_success"].is_null(), "{hub}");
    assert_eq!(hub["last_error"]["endpoint"], "http://127.0.0.1:9");
    assert_eq!(hub["last_error"]["kind"], "unavailable");
    assert!(status["most_pulled"].as_array().unwrap().is_empty());
    assert_eq!(hub["endpoints"][0]["breaker_open"], false);
    // Two more failures in a row open the breaker (threshold 3); the next
    // request is not sent, and the error that opened it stays the last one.
    for tag in ["4", "5", "6"] {
        let answer = get(&svc, &format!("/v2/library/alpine/manifests/{tag}")).await;
        assert!(answer.status.is_server_error(), "{}", answer.status);
    }
    let status = status_json(&svc).await;
    let hub = &status["upstreams"][0];
    assert_eq!(hub["endpoints"][0]["breaker_open"], true, "{hub}");
    assert_eq!(hub["attempts"]["skipped"], 1, "{hub}");
    assert_eq!(hub["last_error"]["kind"], "unavailable");
    let html = String::from_utf8(get(&svc, "/").await.body.to_vec()).unwrap();
    assert!(
        html.contains("<span class=\"bad\">breaker open</span>"),
        "{html}"
    );
    assert!(
        html.contains("last error: <span class=\"bad\">unavailable</span>"),
        "{html}"
    );
}

#[tokio::test]
async fn with_client_authentication_the_page_needs_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let config = mirrors("http://127.0.0.1:9");
    let (inner, _metrics) = mirror("http://127.0.0.1:9");
    // Even with docker.io public, the page names every image pulled.
    let svc = behind_auth(inner, &config, dir.path(), "dev", &["docker.io"]);
    let send = |path: &'static str, user: Option<&'static str>| {
        let svc = svc.clone();
        async move {
            let mut request = http::Request::get(path);
            if let Some(user) = user {
                request = request.header("authorization", user);
            }
            let request = request
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            svc.handle(request).await
        }
    };
    for path in ["/", "/status.json"] {
        let refused = send(path, None).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(refused.headers().contains_key("www-authenticate"));
        // dev:pw
        let admitted = send(path, Some("Basic ZGV2OnB3")).await;
        assert_eq!(admitted.status(), StatusCode::OK, "{path}");
    }
    // kubelet's probes stay open.
    assert_eq!(send("/healthz", None).await.status(), StatusCode::OK);
}
