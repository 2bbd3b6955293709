//! Issue 4 item 6: the `oci-cache` binary between a real origin and real
//! clients. Upstream names look like registry hosts (`a.test`, `b.test`) and
//! map to docker-registry origins on 127.0.0.1.

use std::time::{Duration, Instant};

use super::fixtures::{big_image, multiarch_image, small_image};
use crate::support::containerd::Containerd;
use crate::support::http::{self, ns_pull, CONTAINERD_ACCEPT};
use crate::support::image::{Layout, OCI_MANIFEST};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::s3::S3Server;
use crate::support::{skopeo, tools_available};

/// The sorted digests of every blob of `layout`.
fn blob_digests(layout: &Layout) -> Vec<String> {
    let mut d: Vec<String> = layout.all_blobs().into_iter().map(|b| b.digest).collect();
    d.sort();
    d.dedup();
    d
}

#[test]
fn a_every_routing_mode_copies_the_origin_digests() {
    if !tools_available("a_every_routing_mode_copies_the_origin_digests") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let a_app = small_image(&work.path().join("a-app"), 10);
    let a_multi = multiarch_image(&work.path().join("a-multi"), 20);
    // Same repository and tag on the other origin, different bytes: routing
    // to the wrong upstream cannot go unnoticed.
    let b_app = small_image(&work.path().join("b-app"), 30);
    let a = Origin::with_images(&[(&a_app, "e2e/app:v1"), (&a_multi, "e2e/multi:v1")]);
    let b = Origin::with_images(&[(&b_app, "e2e/app:v1")]);
    let (a_url, b_url) = (a.url(), b.url());
    let mirror = Mirror::start_oci_cache(&[("a.test", &a_url), ("b.test", &b_url)], "a.test", "5m");
    let m = mirror.host();
    let b_before = b.records().len();

    // Default upstream: no upstream named.
    let got = skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join("c1")).unwrap();
    assert_eq!(got.digest, a_app.digest);
    assert_eq!(got.digest, a.manifest_digest("e2e/app", "v1"));
    assert_eq!(
        b.records().len(),
        b_before,
        "default-upstream pull reached b"
    );

    // Path prefix, single image and a multi-arch index with all platforms.
    let got = skopeo::copy(&format!("{m}/b.test/e2e/app:v1"), &work.path().join("c2")).unwrap();
    assert_eq!(got.digest, b_app.digest);
    assert_eq!(got.digest, b.manifest_digest("e2e/app", "v1"));
    let got = skopeo::copy(&format!("{m}/a.test/e2e/multi:v1"), &work.path().join("c3")).unwrap();
    assert_eq!(got.digest, a_multi.digest);
    assert_eq!(skopeo::layout_blobs(&work.path().join("c3")).len(), {
        // Every platform's config and layers, both manifests and the index.
        blob_digests(&a_multi).len() + 3
    });
    assert_eq!(a.count("GET", "/b.test/"), 0, "prefix leaked upstream");

    // ns, as containerd sends it with a hosts.toml mirror.
    let pulled = ns_pull(&m, "b.test", "e2e/app", "v1").unwrap();
    assert_eq!(pulled.digest, b_app.digest);
    let want: Vec<String> = b_app.images[0]
        .blobs()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(pulled.blobs, want);
    let pulled = ns_pull(&m, "a.test", "e2e/multi", "v1").unwrap();
    assert_eq!(pulled.digest, a_multi.digest);
    assert_eq!(pulled.manifests[1], a_multi.images[0].manifest.digest);
    assert_eq!(
        a.count("GET", "ns="),
        0,
        "ns must not be forwarded upstream"
    );
}

#[test]
fn a_containerd_pulls_through_the_ns_mirror() {
    if !tools_available("a_containerd_pulls_through_the_ns_mirror") {
        return;
    }
    let Some(ctrd) = Containerd::start("a_containerd_pulls_through_the_ns_mirror") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let a_multi = multiarch_image(&work.path().join("a-multi"), 21);
    let b_app = small_image(&work.path().join("b-app"), 31);
    let a = Origin::with_images(&[(&a_multi, "e2e/multi:v1")]);
    let b = Origin::with_images(&[(&b_app, "e2e/app:v1")]);
    let (a_url, b_url) = (a.url(), b.url());
    let mirror = Mirror::start_oci_cache(&[("a.test", &a_url), ("b.test", &b_url)], "a.test", "5m");

    // b is not the default upstream: only `ns=b.test` can route there.
    let fetched = ctrd
        .fetch_via_mirror(&mirror.host(), "b.test", "e2e/app:v1")
        .unwrap();
    assert_eq!(fetched.digest, b_app.digest);
    let mut want = blob_digests(&b_app);
    want.push(b_app.digest.clone());
    want.sort();
    assert_eq!(fetched.content, want);

    let fetched = ctrd
        .fetch_via_mirror(&mirror.host(), "a.test", "e2e/multi:v1")
        .unwrap();
    assert_eq!(fetched.digest, a_multi.digest);
    let amd64 = &a_multi.images[0];
    for d in [
        &a_multi.digest,
        &amd64.manifest.digest,
        &amd64.config.digest,
        &amd64.layers[0].digest,
    ] {
        assert!(
            fetched.content.contains(d),
            "{d} missing from {:?}",
            fetched.content
        );
    }
}

#[test]
fn b_second_pull_makes_no_blob_request_to_the_origin() {
    if !tools_available("b_second_pull_makes_no_blob_request_to_the_origin") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 40);
    let multi = multiarch_image(&work.path().join("multi"), 41);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1"), (&multi, "e2e/multi:v1")]);
    let pushed = origin.blob_gets().len();
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let m = mirror.host();

    for (repo, layout) in [("e2e/app", &app), ("e2e/multi", &multi)] {
        let got = skopeo::copy(
            &format!("{m}/{repo}:v1"),
            &work.path().join(format!("{}-1", repo.replace('/', "_"))),
        )
        .unwrap();
        assert_eq!(got.digest, layout.digest);
    }
    let first = origin.blob_get_counts(pushed);
    let mut want = blob_digests(&app);
    want.extend(blob_digests(&multi));
    want.sort();
    assert_eq!(first.keys().cloned().collect::<Vec<_>>(), want);
    assert!(first.values().all(|&n| n == 1), "first pull: {first:?}");
    let blob_gets = origin.blob_gets().len();

    for (repo, layout) in [("e2e/app", &app), ("e2e/multi", &multi)] {
        let got = skopeo::copy(
            &format!("{m}/{repo}:v1"),
            &work.path().join(format!("{}-2", repo.replace('/', "_"))),
        )
        .unwrap();
        assert_eq!(got.digest, layout.digest);
        assert_eq!(
            ns_pull(&m, "origin.test", repo, "v1").unwrap().digest,
            layout.digest
        );
    }
    assert_eq!(
        origin.blob_gets().len(),
        blob_gets,
        "second pulls fetched blobs from the origin: {:?}",
        origin.blob_get_counts(pushed)
    );
}

#[test]
fn c_sixteen_concurrent_cold_pulls_fetch_each_blob_once() {
    if !tools_available("c_sixteen_concurrent_cold_pulls_fetch_each_blob_once") {
        return;
    }
    let (big, _) = big_image();
    let origin = Origin::with_images(&[(big, "e2e/big:v1")]);
    let pushed = origin.blob_gets().len();
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let work = tempfile::tempdir().unwrap();

    let start = Instant::now();
    let results: Vec<Result<skopeo::Copied, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let src = format!("{}/e2e/big:v1", mirror.host());
                let dest = work.path().join(format!("copy-{i}"));
                s.spawn(move || skopeo::copy(&src, &dest))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = start.elapsed();
    let total: u64 = big.all_blobs().iter().map(|b| b.size).sum();
    eprintln!(
        "16 concurrent cold copies of {} MiB through the mirror: {took:.2?}",
        total >> 20
    );
    for r in &results {
        assert_eq!(
            r.as_ref().map(|c| c.digest.as_str()),
            Ok(big.digest.as_str())
        );
    }
    let per_blob = origin.blob_get_counts(pushed);
    assert_eq!(
        per_blob.keys().cloned().collect::<Vec<_>>(),
        blob_digests(big)
    );
    // Each blob once: layers over 16 MiB come in ranged parts that add up
    // to the blob, never a byte twice.
    let gets = &origin.blob_gets()[pushed..];
    for blob in big.all_blobs() {
        let sent: u64 = gets
            .iter()
            .filter(|r| r.path.contains(&blob.digest))
            .map(|r| r.bytes)
            .sum();
        assert_eq!(
            sent, blob.size,
            "{} sent other than once: {per_blob:?}",
            blob.digest
        );
    }
    let fetched: u64 = gets.iter().map(|r| r.bytes).sum();
    assert_eq!(fetched, total);
}

#[test]
fn d_unknown_ns_is_refused_without_touching_the_origin() {
    if !tools_available("d_unknown_ns_is_refused_without_touching_the_origin") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 50);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let before = origin.records().len();
    let layer = &app.images[0].layers[0].digest;
    for (method, path) in [
        (
            "GET",
            "/v2/e2e/app/manifests/v1?ns=unknown.example".to_owned(),
        ),
        (
            "HEAD",
            "/v2/e2e/app/manifests/v1?ns=unknown.example".to_owned(),
        ),
        (
            "GET",
            format!("/v2/e2e/app/blobs/{layer}?ns=unknown.example"),
        ),
        ("GET", "/v2/e2e/app/tags/list?ns=evil.example".to_owned()),
    ] {
        let resp = http::request(
            &mirror.host(),
            method,
            &path,
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .unwrap();
        assert!(
            (400..500).contains(&resp.status),
            "{method} {path}: status {}",
            resp.status
        );
        if method == "GET" {
            let body: serde_json::Value = serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{method} {path}: error body is not json: {e}"));
            assert!(
                body["errors"][0]["code"].is_string(),
                "{method} {path}: {body}"
            );
        }
    }
    assert_eq!(
        origin.records().len(),
        before,
        "unknown ns reached the origin"
    );
}

#[test]
fn e_pulls_with_the_s3_storage_backend() {
    if !tools_available("e_pulls_with_the_s3_storage_backend") {
        return;
    }
    let Some(s3) = S3Server::start("e_pulls_with_the_s3_storage_backend") else {
        return;
    };
    s3.create_bucket("oci-cache-e2e");
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 60);
    let multi = multiarch_image(&work.path().join("multi"), 61);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1"), (&multi, "e2e/multi:v1")]);
    let pushed = origin.blob_gets().len();
    let config = format!(
        "[storage]\nkind = \"s3\"\nbucket = \"oci-cache-e2e\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\npath_style = true\n",
        s3.endpoint()
    );
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache_with_config(
        &config,
        &[("origin.test", &origin_url)],
        "origin.test",
        "5m",
        &[
            ("AWS_ACCESS_KEY_ID", "e2e"),
            ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let m = mirror.host();
    for round in 0..2 {
        for (repo, layout) in [("e2e/app", &app), ("e2e/multi", &multi)] {
            let dest = work
                .path()
                .join(format!("{}-{round}", repo.replace('/', "_")));
            let got = skopeo::copy(&format!("{m}/origin.test/{repo}:v1"), &dest).unwrap();
            assert_eq!(got.digest, layout.digest);
        }
        let pulled = ns_pull(&m, "origin.test", "e2e/multi", "v1").unwrap();
        assert_eq!(pulled.digest, multi.digest);
    }
    let per_blob = origin.blob_get_counts(pushed);
    assert!(per_blob.values().all(|&n| n == 1), "{per_blob:?}");
    let blobs = blob_digests(&app).len() + blob_digests(&multi).len();
    assert_eq!(per_blob.len(), blobs);
    let keys = s3.keys("oci-cache-e2e");
    assert!(
        keys.len() >= blobs,
        "{} objects in the bucket: {keys:?}",
        keys.len()
    );
}

#[test]
fn f_range_and_head_answers_match_the_bytes() {
    if !tools_available("f_range_and_head_answers_match_the_bytes") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = crate::support::image::build_image(
        &work.path().join("app"),
        "v1",
        &crate::support::image::ImageSpec::new(70, 2, 300_000),
    );
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let m = mirror.host();
    let image = &app.images[0];

    // Manifest HEAD by tag and by digest.
    for reference in ["v1", image.manifest.digest.as_str()] {
        let head = http::request(
            &m,
            "HEAD",
            &format!("/v2/e2e/app/manifests/{reference}"),
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .unwrap();
        assert_eq!(head.status, 200, "HEAD manifest {reference}");
        assert_eq!(
            head.header("docker-content-digest"),
            Some(app.digest.as_str())
        );
        assert_eq!(
            head.header("content-length"),
            Some(image.manifest.size.to_string().as_str())
        );
        assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
        assert!(head.body.is_empty());
    }

    // A cold blob asked for with a Range: a server may answer the whole blob
    // (200) or the range (206), but the bytes must be right either way.
    let cold = &image.layers[0];
    let bytes = std::fs::read(app.blob_path(&cold.digest)).unwrap();
    let path = format!("/v2/e2e/app/blobs/{}", cold.digest);
    let r = http::request(&m, "GET", &path, &[("Range", "bytes=1000-1999")]).unwrap();
    match r.status {
        206 => assert_eq!(r.body, bytes[1000..2000]),
        200 => assert_eq!(r.body, bytes),
        s => panic!("cold range GET: status {s}"),
    }

    // Warm: HEAD and every kind of range answer from the cache.
    let warm = &image.layers[1];
    let bytes = std::fs::read(app.blob_path(&warm.digest)).unwrap();
    let path = format!("/v2/e2e/app/blobs/{}", warm.digest);
    let full = http::request(&m, "GET", &path, &[]).unwrap();
    assert_eq!(full.status, 200);
    assert_eq!(http::sha256_digest(&full.body), warm.digest);
    let head = http::request(&m, "HEAD", &path, &[]).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(warm.size.to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(warm.digest.as_str())
    );
    assert!(head.body.is_empty());
    let size = warm.size as usize;
    let cases: [(&str, std::ops::Range<usize>); 4] = [
        ("bytes=0-0", 0..1),
        ("bytes=4096-70000", 4096..70001),
        ("bytes=-100", size - 100..size),
        ("bytes=300000-", 300_000..size),
    ];
    for (range, want) in cases {
        let r = http::request(&m, "GET", &path, &[("Range", range)]).unwrap();
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{size}", want.start, want.end - 1).as_str()),
            "{range}"
        );
        assert!(r.body == bytes[want.clone()], "{range}: wrong bytes");
    }
    let r = http::request(&m, "GET", &path, &[("Range", &format!("bytes={size}-"))]).unwrap();
    assert_eq!(r.status, 416, "range past the end");

    // Each blob came whole from the origin once, however it was asked for
    // (the fill's GET asks a first part, so a blob under one part comes
    // whole as a 206; a forwarded range brings fewer bytes).
    for blob in [cold, warm] {
        let full_gets = origin
            .records()
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && matches!(r.status, 200 | 206)
                    && r.bytes == blob.size
                    && r.path.contains(&blob.digest)
            })
            .count();
        assert_eq!(
            full_gets,
            1,
            "{}: {:?}",
            blob.digest,
            origin.blob_get_counts(0)
        );
    }
}

#[test]
fn g_a_moved_tag_is_seen_after_the_ttl() {
    if !tools_available("g_a_moved_tag_is_seen_after_the_ttl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let old = small_image(&work.path().join("old"), 80);
    let new = small_image(&work.path().join("new"), 81);
    let origin = Origin::with_images(&[(&old, "e2e/app:v1")]);
    let origin_url = origin.url();
    let upstreams = [("origin.test", origin_url.as_str())];
    let short = Mirror::start_oci_cache(&upstreams, "origin.test", "1s");
    let long = Mirror::start_oci_cache(&upstreams, "origin.test", "1h");
    for (name, mirror) in [("short-1", &short), ("long-1", &long)] {
        let got = skopeo::copy(
            &format!("{}/e2e/app:v1", mirror.host()),
            &work.path().join(name),
        )
        .unwrap();
        assert_eq!(got.digest, old.digest);
    }

    skopeo::push(&new, &origin.host(), "e2e/app:v1");
    assert_eq!(origin.manifest_digest("e2e/app", "v1"), new.digest);
    std::thread::sleep(Duration::from_millis(2500));

    // Past the short TTL the tag is revalidated and the new digest served ...
    let got = skopeo::copy(
        &format!("{}/e2e/app:v1", short.host()),
        &work.path().join("short-2"),
    )
    .unwrap();
    assert_eq!(got.digest, new.digest);
    assert_eq!(
        ns_pull(&short.host(), "origin.test", "e2e/app", "v1")
            .unwrap()
            .digest,
        new.digest
    );
    // ... while within the long TTL the cached tag still answers.
    let got = skopeo::copy(
        &format!("{}/e2e/app:v1", long.host()),
        &work.path().join("long-2"),
    )
    .unwrap();
    assert_eq!(got.digest, old.digest);
}
