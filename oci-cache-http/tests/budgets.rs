//! Polite to upstreams (issue 27): per-upstream budgets, `Retry-After`
//! honoured, the allowance visible, and the pull policy before any request;
//! against a scripted registry that counts and limits like Docker Hub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use oci_cache_core::cache::CacheOptions;
use oci_cache_core::policy::{PolicyAction, PolicyRule, PullPolicy};
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_http::metrics::Metrics;
use oci_cache_http::{Mirror, OciService, ProxyConfig, UpstreamOptions};

use crate::support::limited::{LimitedRegistry, Limits};
use crate::support::{call, get, mirrors};

fn mirror(
    registry: &LimitedRegistry,
    options: UpstreamOptions,
    policy: PullPolicy,
) -> (OciService, Arc<Metrics>) {
    mirror_with(registry, options, policy, CacheOptions::default())
}

fn mirror_with(
    registry: &LimitedRegistry,
    options: UpstreamOptions,
    policy: PullPolicy,
    cache: CacheOptions,
) -> (OciService, Arc<Metrics>) {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let metrics = Arc::new(Metrics::new());
    let mirror = Mirror::builder()
        .upstreams(mirrors(&registry.url()))
        .storage(storage)
        .cache_options(cache)
        .upstream_options(options.with_proxy(ProxyConfig::Direct))
        .metrics(metrics.clone())
        .pull_policy(policy)
        .build()
        .unwrap();
    (mirror.service(), metrics)
}

fn sample(metrics: &Metrics, name: &str) -> Option<f64> {
    let text = metrics.encode();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap()
        .samples
        .into_iter()
        .find(|s| s.metric == name && s.labels.get("upstream") == Some("docker.io"))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
}

/// The gauges of the allowance, as the upstream's headers last said.
fn assert_allowance(metrics: &Metrics, remaining: f64, limit: f64) {
    let gauge = |name| sample(metrics, name);
    assert_eq!(
        (
            gauge("oci_cache_upstream_ratelimit_remaining"),
            gauge("oci_cache_upstream_ratelimit_limit")
        ),
        (Some(remaining), Some(limit))
    );
}

/// A registry allowing `pulls` manifest GETs per `window`.
async fn with_allowance(pulls: u64, window: Duration) -> LimitedRegistry {
    LimitedRegistry::start(Limits {
        allowance: Some((pulls, window)),
        ..Limits::default()
    })
    .await
}

/// Pulls image `n` the way a client does: the manifest by tag, then its blobs.
/// `Err` carries a refusal: its status and `Retry-After`.
async fn pull(svc: &OciService, n: usize) -> Result<(), (StatusCode, Option<String>)> {
    let refused =
        |a: &crate::support::Answer| (a.status, a.header("retry-after").map(str::to_owned));
    let manifest = get(svc, &format!("/v2/library/img{n}/manifests/latest")).await;
    if manifest.status != StatusCode::OK {
        return Err(refused(&manifest));
    }
    let (digest, blobs) = LimitedRegistry::digests(n);
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(&*digest.to_string())
    );
    for blob in blobs {
        let answer = get(svc, &format!("/v2/library/img{n}/blobs/{blob}")).await;
        if answer.status != StatusCode::OK {
            return Err(refused(&answer));
        }
        assert_eq!(
            oci_cache_core::digest::Digest::sha256_of(&answer.body),
            blob
        );
    }
    Ok(())
}

/// 50 concurrent cold pulls of 20 images, cap 4: the cap holds, every pull
/// completes, and the queue was visible while it was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_cold_pulls_stays_under_the_cap() {
    let registry = with_allowance(100, Duration::from_secs(3600)).await;
    let options = UpstreamOptions::default().with_max_concurrent_requests(4);
    let (svc, metrics) = mirror(&registry, options, PullPolicy::default());
    let pulls = (0..50).map(|i| {
        let svc = svc.clone();
        tokio::spawn(async move { pull(&svc, i % 20).await })
    });
    for result in futures::future::join_all(pulls).await {
        result.unwrap().unwrap();
    }
    assert!(
        registry.max_in_flight() <= 4,
        "{}",
        registry.max_in_flight()
    );
    assert!(
        registry.max_in_flight() >= 2,
        "the test did load the upstream"
    );
    let log = registry.log();
    assert!(log.iter().all(|l| l.status == 200), "no upstream 429");
    let manifest_gets = log
        .iter()
        .filter(|l| l.method == Method::GET && l.path.contains("/manifests/"))
        .count();
    assert_eq!(manifest_gets, 20, "each manifest fetched once");
    assert_eq!(
        sample(&metrics, "oci_cache_upstream_ratelimit_limit"),
        Some(100.0)
    );
    // The last answer to arrive set it; answers in flight together may end out of order.
    let remaining = sample(&metrics, "oci_cache_upstream_ratelimit_remaining").unwrap();
    assert!((80.0..84.0).contains(&remaining), "{remaining}");
    assert!(sample(&metrics, "oci_cache_upstream_wait_seconds_count").unwrap_or(0.0) > 0.0);
    assert_eq!(sample(&metrics, "oci_cache_upstream_queued"), Some(0.0));
}

/// An allowance smaller than the fleet needs: clients that cannot be served
/// are told when to come back, and once upstream said 429 nothing more is
/// sent to it until its Retry-After has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_allowance_clients_are_told_when_to_come_back() {
    let registry = with_allowance(8, Duration::from_secs(30)).await;
    let options = UpstreamOptions::default().with_max_concurrent_requests(4);
    let (svc, metrics) = mirror(&registry, options, PullPolicy::default());
    let pulls = (0..50).map(|i| {
        let svc = svc.clone();
        tokio::spawn(async move { pull(&svc, i % 20).await })
    });
    let mut served = 0;
    for result in futures::future::join_all(pulls).await {
        match result.unwrap() {
            Ok(()) => served += 1,
            Err((status, retry_after)) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
                let seconds: u64 = retry_after.expect("a Retry-After").parse().unwrap();
                assert!((1..=30).contains(&seconds), "{seconds}");
            }
        }
    }
    // The pause covers the whole host, blobs of admitted images included.
    assert!(served < 50, "the allowance ran out: {served}");
    let log = registry.log();
    let first_429 = log
        .iter()
        .filter(|l| l.status == 429)
        .map(|l| l.answered)
        .min();
    let first_429 = first_429.expect("the allowance ran out");
    // Requests already sent when the first 429 was answered may arrive a
    // moment later (at most the other permits); none is sent after it.
    let after: Vec<_> = log.iter().filter(|l| l.at > first_429).collect();
    assert!(after.len() < 4, "sent after the 429: {after:?}");
    assert_allowance(&metrics, 0.0, 8.0);
}

/// Retry-After is honoured: no request reaches the upstream before it
/// expires, clients get 429 with our own Retry-After, and after it the pull works.
#[tokio::test]
async fn retry_after_pauses_the_upstream_until_it_expires() {
    let registry = with_allowance(1, Duration::from_secs(2)).await;
    let (svc, metrics) = mirror(&registry, UpstreamOptions::default(), PullPolicy::default());
    let first = get(&svc, "/v2/library/img0/manifests/latest").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        sample(&metrics, "oci_cache_upstream_ratelimit_remaining"),
        Some(0.0)
    );
    let refused = get(&svc, "/v2/library/img1/manifests/latest").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "TOOMANYREQUESTS");
    let seen = registry.log().len();
    let paused_at = Instant::now();
    for n in 2..5 {
        let answer = get(&svc, &format!("/v2/library/img{n}/manifests/latest")).await;
        assert_eq!(answer.status, 429);
        let seconds: u64 = answer.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&seconds), "{seconds}");
        let head = call(&svc, Method::HEAD, "/v2/library/img3/manifests/latest", &[]).await;
        assert_eq!(head.status, 429);
    }
    assert_eq!(registry.log().len(), seen, "nothing sent while paused");
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(paused_at.elapsed())).await;
    let after = get(&svc, "/v2/library/img2/manifests/latest").await;
    assert_eq!(after.status, 200);
    let log = registry.log();
    assert_eq!(log.len(), seen + 1);
    assert_allowance(&metrics, 0.0, 1.0);
}

/// While the upstream is paused, a cached tag past its TTL is served stale
/// instead of asking upstream.
#[tokio::test]
async fn a_paused_upstream_leaves_cached_tags_served_stale() {
    let registry = with_allowance(1, Duration::from_secs(3)).await;
    let cache = CacheOptions::default().with_tag_ttl(Duration::from_millis(500));
    let (svc, _) = mirror_with(
        &registry,
        UpstreamOptions::default(),
        PullPolicy::default(),
        cache,
    );
    assert_eq!(
        get(&svc, "/v2/library/img0/manifests/latest").await.status,
        200
    );
    assert_eq!(
        get(&svc, "/v2/library/img1/manifests/latest").await.status,
        429
    );
    let seen = registry.log().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stale = get(&svc, "/v2/library/img0/manifests/latest").await;
    assert_eq!(stale.status, 200);
    let (digest, _) = LimitedRegistry::digests(0);
    assert_eq!(
        stale.header("docker-content-digest"),
        Some(&*digest.to_string())
    );
    assert_eq!(
        registry.log().len(),
        seen,
        "the paused upstream was not asked"
    );
}

/// Blobs queued behind a cap are overtaken by a manifest: it is sent as soon
/// as one request ends, not after every queued blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_overtake_queued_blobs() {
    let registry = LimitedRegistry::start(Limits {
        blob_delay: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Cap 4: blobs get at most 3 slots, so the fourth and later blobs queue.
    let options = UpstreamOptions::default().with_max_concurrent_requests(4);
    let (svc, _) = mirror(&registry, options, PullPolicy::default());
    let mut blobs = Vec::new();
    for n in 0..8 {
        let svc = svc.clone();
        let (_, digests) = LimitedRegistry::digests(n);
        blobs.push(tokio::spawn(async move {
            get(&svc, &format!("/v2/library/img{n}/blobs/{}", digests[1]))
                .await
                .status
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let manifest = get(&svc, "/v2/library/img9/manifests/latest").await;
    let took = started.elapsed();
    assert_eq!(manifest.status, 200);
    // Behind every queued blob it would wait three 300 ms rounds; the
    // bound leaves a loaded machine room and still tells the two apart.
    assert!(
        took < Duration::from_millis(500),
        "the manifest waited {took:?}"
    );
    for blob in blobs {
        assert_eq!(blob.await.unwrap(), 200);
    }
    let log = registry.log();
    let manifest_at = log
        .iter()
        .find(|l| l.path.contains("/manifests/"))
        .unwrap()
        .at;
    let blobs_before = log
        .iter()
        .filter(|l| l.path.contains("/blobs/") && l.at < manifest_at)
        .count();
    assert_eq!(blobs_before, 3, "only the blobs holding slots went first");
    assert!(registry.max_in_flight() <= 4);
}

/// A denied repository costs no upstream request, however it is asked for,
/// and the answer names the rule.
#[tokio::test]
async fn denied_references_cause_no_upstream_request() {
    let registry = LimitedRegistry::start(Limits::default()).await;
    let policy = PullPolicy::new(vec![
        PolicyRule::new("img0-latest", PolicyAction::Deny)
            .with_repository("library/img0")
            .with_tag("latest"),
        PolicyRule::new("no-img1", PolicyAction::Deny)
            .with_upstream("docker.io")
            .with_repository("library/img1"),
    ])
    .unwrap();
    let (svc, _) = mirror(&registry, UpstreamOptions::default(), policy);
    let (digest0, _) = LimitedRegistry::digests(0);
    let (digest1, blobs1) = LimitedRegistry::digests(1);
    let denied = [
        (
            Method::GET,
            "/v2/library/img0/manifests/latest".to_owned(),
            "img0-latest",
        ),
        (
            Method::HEAD,
            "/v2/library/img0/manifests/latest".to_owned(),
            "img0-latest",
        ),
        (
            Method::GET,
            "/v2/library/img1/manifests/latest".to_owned(),
            "no-img1",
        ),
        (
            Method::GET,
            format!("/v2/library/img1/manifests/{digest1}"),
            "no-img1",
        ),
        (
            Method::HEAD,
            format!("/v2/library/img1/manifests/{digest1}"),
            "no-img1",
        ),
        (
            Method::GET,
            format!("/v2/library/img1/blobs/{}", blobs1[1]),
            "no-img1",
        ),
        (
            Method::HEAD,
            format!("/v2/library/img1/blobs/{}", blobs1[0]),
            "no-img1",
        ),
        (
            Method::GET,
            "/v2/library/img1/tags/list".to_owned(),
            "no-img1",
        ),
        (
            Method::GET,
            "/v2/img1/manifests/latest".to_owned(),
            "no-img1",
        ),
    ];
    for (method, uri, rule) in denied {
        let answer = call(&svc, method.clone(), &uri, &[]).await;
        assert_eq!(answer.status, 403, "{method} {uri}");
        if method == Method::GET {
            assert_eq!(answer.error_code(), "DENIED");
            let message = answer.json()["errors"][0]["message"].to_string();
            assert!(message.contains(rule), "{message}");
        }
    }
    assert_eq!(registry.log().len(), 0, "{:?}", registry.log());
    // A tag rule does not stop a pull by digest; the rest of img0 is allowed.
    let by_digest = get(&svc, &format!("/v2/library/img0/manifests/{digest0}")).await;
    assert_eq!(by_digest.status, 200);
    assert_eq!(registry.log().len(), 1);
}

/// The policy is swapped while serving, applies to cached content too, and
/// a hosted repository cannot mount a blob `from` a denied cached repository.
#[tokio::test]
async fn a_replaced_policy_denies_cached_content_and_mounts_from_it() {
    let registry = LimitedRegistry::start(Limits::default()).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mirror = Mirror::builder()
        .upstreams(mirrors(&registry.url()))
        .storage(storage)
        .upstream_options(UpstreamOptions::default().with_proxy(ProxyConfig::Direct))
        .local_prefixes(["team"])
        .build()
        .unwrap();
    let svc = mirror.service();
    let (_, blobs) = LimitedRegistry::digests(0);
    let layer = format!("/v2/docker.io/library/img0/blobs/{}", blobs[1]);
    assert_eq!(get(&svc, &layer).await.status, 200);
    let seen = registry.log().len();

    mirror.engine().policy().replace(
        PullPolicy::new(vec![
            PolicyRule::new("img0-withdrawn", PolicyAction::Deny).with_repository("library/img0")
        ])
        .unwrap(),
    );
    let cached = get(&svc, &layer).await;
    assert_eq!(cached.status, 403, "a cached blob of a denied repository");
    let mount = |from: &str| format!("/v2/team/app/blobs/uploads/?mount={}&from={from}", blobs[1]);
    let refused = call(&svc, Method::POST, &mount("docker.io/library/img0"), &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "DENIED");
    assert!(refused.json()["errors"][0]["message"]
        .to_string()
        .contains("img0-withdrawn"));
    let other = call(&svc, Method::POST, &mount("docker.io/library/img2"), &[]).await;
    assert_eq!(other.status, 201, "a mount from an allowed repository");
    assert_eq!(registry.log().len(), seen, "nothing was asked upstream");
}
