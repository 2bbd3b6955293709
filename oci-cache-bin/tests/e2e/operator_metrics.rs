//! Issue 25 item 6: figures an operator alerts on, after real pulls through
//! two upstreams (two docker-registry origins, skopeo, the `oci-cache`
//! binary): per-upstream requests and bytes against the origins' own access
//! logs, manifest GETs avoided, the cap, build and process figures, the
//! storage gauges after an `oci-cache purge` run beside the server, and the
//! access log's client fields.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metrics::Scrape;
use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

const CAP: u64 = 1 << 30;

fn blob_bytes(layout: &Layout) -> u64 {
    layout.images[0].blobs().iter().map(|b| b.size).sum()
}

fn blob_count(layout: &Layout) -> f64 {
    layout.images[0].blobs().len() as f64
}

#[test]
fn per_upstream_figures_match_the_origins_and_follow_a_cli_purge() {
    if !tools_available("per_upstream_figures_match_the_origins_and_follow_a_cli_purge") {
        return;
    }
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let work = tempfile::tempdir().unwrap();
    let a = build_image(
        &work.path().join("a"),
        "v1",
        &ImageSpec::new(2501, 2, 200_000),
    );
    let b = build_image(
        &work.path().join("b"),
        "v1",
        &ImageSpec::new(2502, 3, 150_000),
    );
    let origin_a = Origin::start();
    skopeo::push(&a, &origin_a.host(), "e2e/a:v1");
    let origin_b = Origin::start();
    skopeo::push(&b, &origin_b.host(), "e2e/b:v1");
    // What the pushes left in the origins' logs is not the mirror's doing.
    let (a_before, b_before) = (origin_a.records().len(), origin_b.records().len());
    let (url_a, url_b) = (origin_a.url(), origin_b.url());
    let upstreams = [("a.test", url_a.as_str()), ("b.test", url_b.as_str())];
    let mut args: Vec<String> = Vec::new();
    for (name, url) in upstreams {
        args.extend(["--upstream".into(), format!("{name}={url}")]);
    }
    args.extend(
        [
            "--default-upstream",
            "a.test",
            "--tag-ttl",
            "5m",
            "--max-size",
            "1GiB",
        ]
        .map(String::from),
    );
    let mirror = Mirror::start_oci_cache_args(&args);
    let m = mirror.host();

    // a: cold, warm; b: cold, warm, warm.
    for (image, layout, pulls) in [("a.test/e2e/a:v1", &a, 2), ("b.test/e2e/b:v1", &b, 3)] {
        for pull in 0..pulls {
            let dest = work.path().join(format!("{}-{pull}", &image[..1]));
            let got = skopeo::copy(&format!("{m}/{image}"), &dest).unwrap();
            assert_eq!(got.digest, layout.digest);
        }
    }

    let s = Scrape::of(&m);
    let blobs = |upstream: &str, cache: &str| {
        s.sum(
            "oci_cache_requests_total",
            &[("route", "blob"), ("upstream", upstream), ("cache", cache)],
        )
    };
    let served = |upstream: &str, cache: &str| {
        s.sum(
            "oci_cache_served_bytes_total",
            &[("route", "blob"), ("upstream", upstream), ("cache", cache)],
        )
    };
    // Every blob a miss once, then a hit on each later pull; the origins
    // saw exactly the misses.
    let a_origin_blob_gets = origin_blob_gets_after(&origin_a, a_before);
    let b_origin_blob_gets = origin_blob_gets_after(&origin_b, b_before);
    assert_eq!(blobs("a.test", "miss"), blob_count(&a));
    assert_eq!(blobs("a.test", "miss"), a_origin_blob_gets as f64);
    assert_eq!(blobs("a.test", "hit"), blob_count(&a));
    assert_eq!(blobs("b.test", "miss"), blob_count(&b));
    assert_eq!(blobs("b.test", "miss"), b_origin_blob_gets as f64);
    assert_eq!(blobs("b.test", "hit"), 2.0 * blob_count(&b));
    assert_eq!(served("a.test", "miss"), blob_bytes(&a) as f64);
    assert_eq!(served("a.test", "hit"), blob_bytes(&a) as f64);
    assert_eq!(served("b.test", "hit"), 2.0 * blob_bytes(&b) as f64);
    // Bytes fetched upstream: what each origin says it sent the mirror.
    for (name, origin, before) in [
        ("a.test", &origin_a, a_before),
        ("b.test", &origin_b, b_before),
    ] {
        let sent: u64 = origin.records().iter().skip(before).map(|r| r.bytes).sum();
        assert_eq!(
            s.sum("oci_cache_upstream_bytes_total", &[("upstream", name)]),
            sent as f64,
            "bytes fetched from {name}"
        );
    }
    // Manifest GETs: one per image upstream, the warm pulls' ones avoided.
    let origin_manifest_gets = |origin: &Origin, before: usize| {
        origin
            .records()
            .iter()
            .skip(before)
            .filter(|r| r.method == "GET" && r.path.contains("/manifests/"))
            .count()
    };
    assert_eq!(origin_manifest_gets(&origin_a, a_before), 1);
    assert_eq!(origin_manifest_gets(&origin_b, b_before), 1);
    let avoided = |u: &str| {
        s.sum(
            "oci_cache_upstream_manifest_gets_avoided_total",
            &[("upstream", u)],
        )
    };
    assert!(
        avoided("a.test") >= 1.0,
        "a warm pull avoids its manifest GET"
    );
    assert_eq!(
        avoided("b.test"),
        2.0 * avoided("a.test"),
        "two warm pulls of b, one of a"
    );

    // The status page shows each upstream's hit ratio from the same counters.
    let status = crate::support::http::request(&m, "GET", "/status.json", &[]).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    for name in ["a.test", "b.test"] {
        let count = |cache: &str| {
            ["manifest", "blob"]
                .iter()
                .map(|route| {
                    s.sum(
                        "oci_cache_requests_total",
                        &[("route", route), ("upstream", name), ("cache", cache)],
                    )
                })
                .sum::<f64>()
        };
        let from_cache: f64 = ["hit", "revalidated", "stale", "coalesced"]
            .map(count)
            .iter()
            .sum();
        let expected = from_cache / (from_cache + count("miss"));
        let upstream = status["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap();
        let shown = upstream["hit_ratio"].as_f64().unwrap();
        assert!(
            (shown - expected).abs() < 1e-9,
            "{name}: {shown} vs {expected}"
        );
    }
    assert!(
        status["upstreams"][0]["hit_ratio"].as_f64()
            != status["upstreams"][1]["hit_ratio"].as_f64(),
        "one warm pull of a, two of b: different ratios"
    );

    // The cap, what runs, and the process.
    assert_eq!(s.sum("oci_cache_storage_cap_bytes", &[]), CAP as f64);
    assert_eq!(
        s.sum(
            "oci_cache_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let rss = s.sum("process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 2e9, "rss {rss}");
    let fds = s.sum("process_open_fds", &[]);
    assert!((4.0..1000.0).contains(&fds), "open fds {fds}");
    let start = s.sum("process_start_time_seconds", &[]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        start >= started.as_secs_f64() - 2.0 && start <= now.as_secs_f64(),
        "start time {start}, test started {started:?}"
    );

    // The access log: who pulled, with what, through which upstream.
    let log = mirror.log();
    let line = log
        .lines()
        .find(|l| {
            l.contains("route=blob") && l.contains("upstream=b.test") && l.contains("cache=hit")
        })
        .unwrap_or_else(|| panic!("no blob hit of b.test in\n{log}"));
    assert!(line.contains("client=127.0.0.1"), "{line}");
    let agent = skopeo_user_agent();
    assert!(
        line.contains(&format!("user_agent=\"{agent}\"")),
        "{line} (skopeo sends {agent})"
    );

    // purge beside the live server: the gauges drop to b's blobs alone.
    assert_eq!(
        s.sum("oci_cache_storage_bytes", &[]),
        (blob_bytes(&a) + blob_bytes(&b)) as f64
    );
    let mut purge = Command::new(oci_cache_bin());
    purge
        .arg("purge")
        .args([
            "--storage-dir",
            &mirror.dir().join("storage").display().to_string(),
        ])
        .args(&args)
        .arg("a.test/e2e/a:v1");
    let out = purge.output().unwrap();
    assert!(
        out.status.success(),
        "purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = Scrape::of(&m);
        if s.sum("oci_cache_storage_objects", &[]) == blob_count(&b) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(after.sum("oci_cache_storage_objects", &[]), blob_count(&b));
    assert_eq!(
        after.sum("oci_cache_storage_bytes", &[]),
        blob_bytes(&b) as f64
    );
    assert_eq!(after.sum("oci_cache_evictions_total", &[]), blob_count(&a));
    assert_eq!(
        after.sum("oci_cache_evicted_bytes_total", &[]),
        blob_bytes(&a) as f64
    );
}

fn origin_blob_gets_after(origin: &Origin, before: usize) -> usize {
    origin
        .records()
        .iter()
        .skip(before)
        // A fill's first GET asks a range (206) to learn whether the
        // origin serves parts; each blob here is under one part.
        .filter(|r| {
            r.method == "GET" && r.path.contains("/blobs/") && matches!(r.status, 200 | 206)
        })
        .count()
}

/// The user agent skopeo sends: `skopeo/<its version>`.
fn skopeo_user_agent() -> String {
    let out = Command::new("skopeo").arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "skopeo version 1.9.3" (newer ones add " commit: …").
    let version = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{text}"));
    format!("skopeo/{version}")
}
