//! Issue 12: the figures `/metrics` exposes after real pulls (docker-registry
//! origin, skopeo, the `oci-cache` binary), parsed with a Prometheus text
//! parser; `--metrics-listen`; `/readyz` when storage breaks.

use std::time::{Duration, Instant};

use crate::support::http::{self, CONTAINERD_ACCEPT};
use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{free_port, skopeo, tools_available};

/// One scrape, parsed.
pub(super) struct Scrape(Vec<prometheus_parse::Sample>);

impl Scrape {
    pub(super) fn of(host: &str) -> Scrape {
        let resp = http::request(host, "GET", "/metrics", &[]).unwrap();
        assert_eq!(resp.status, 200, "GET /metrics on {host}");
        let text = String::from_utf8(resp.body).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).unwrap().samples)
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    pub(super) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
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
}

fn blob_bytes(layout: &Layout) -> u64 {
    layout.images[0].blobs().iter().map(|b| b.size).sum()
}

#[test]
fn a_cold_and_warm_pull_add_up_in_the_scrape() {
    if !tools_available("a_cold_and_warm_pull_add_up_in_the_scrape") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = build_image(
        &work.path().join("app"),
        "v1",
        &ImageSpec::new(1201, 3, 300_000),
    );
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &url)], "origin.test", "5m");
    let m = mirror.host();

    for pass in ["cold", "warm"] {
        let got = skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join(pass)).unwrap();
        assert_eq!(got.digest, app.digest);
    }

    let blobs = blob_bytes(&app);
    let manifest = app.images[0].manifest.size;
    let s = Scrape::of(&m);
    let upstream = s.sum("oci_cache_upstream_bytes_total", &[]);
    let image = (blobs + manifest) as f64;
    assert!(
        upstream >= blobs as f64 && (upstream - image).abs() <= image * 0.01,
        "upstream bytes {upstream}, image {image} (blobs {blobs}, manifest {manifest})"
    );
    assert_eq!(
        s.sum("oci_cache_served_bytes_total", &[("route", "blob")]),
        (2 * blobs) as f64,
        "blob bytes served over two pulls"
    );
    assert!(s.sum("oci_cache_requests_total", &[("cache", "hit")]) > 0.0);
    assert!(s.sum("oci_cache_requests_total", &[("cache", "miss")]) > 0.0);
    assert_eq!(s.sum("oci_cache_fills_in_flight", &[]), 0.0);
    assert_eq!(
        s.sum("oci_cache_storage_objects", &[]),
        app.images[0].blobs().len() as f64,
        "every blob of the image is stored once"
    );
    assert_eq!(s.sum("oci_cache_storage_bytes", &[]), blobs as f64);

    // The access log agrees with the counters: one line per blob request, with the bytes sent.
    let log = mirror.log();
    let blob_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("route=blob") && l.contains("status=200"))
        .collect();
    let logged: u64 = blob_lines
        .iter()
        .filter_map(|l| field(l, "bytes").and_then(|b| b.parse::<u64>().ok()))
        .sum();
    assert_eq!(logged, 2 * blobs, "access log bytes: {blob_lines:#?}");
}

/// The value of `key=value` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

#[test]
fn b_concurrent_cold_pulls_are_counted_as_coalesced() {
    if !tools_available("b_concurrent_cold_pulls_are_counted_as_coalesced") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = build_image(
        &work.path().join("app"),
        "v1",
        &ImageSpec::new(1202, 3, 4 << 20),
    );
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &url)], "origin.test", "5m");
    let m = mirror.host();

    std::thread::scope(|scope| {
        let pulls: Vec<_> = (0..16)
            .map(|i| {
                let (m, dest) = (&m, work.path().join(format!("pull-{i}")));
                scope.spawn(move || skopeo::copy(&format!("{m}/e2e/app:v1"), &dest))
            })
            .collect();
        for pull in pulls {
            assert_eq!(pull.join().unwrap().unwrap().digest, app.digest);
        }
    });
    let s = Scrape::of(&m);
    let coalesced = s.sum("oci_cache_coalesced_total", &[]);
    eprintln!(
        "b: coalesced_total {coalesced}, requests by cache: hit {} miss {} coalesced {}",
        s.sum("oci_cache_requests_total", &[("cache", "hit")]),
        s.sum("oci_cache_requests_total", &[("cache", "miss")]),
        s.sum("oci_cache_requests_total", &[("cache", "coalesced")]),
    );
    assert!(
        coalesced > 0.0,
        "16 concurrent cold pulls coalesced nothing"
    );
    let blobs = blob_bytes(&app) as f64;
    let upstream = s.sum("oci_cache_upstream_bytes_total", &[]);
    assert!(
        upstream < 2.0 * blobs,
        "each blob fetched once: upstream {upstream}, blobs {blobs}"
    );
    assert_eq!(s.sum("oci_cache_fills_in_flight", &[]), 0.0);
}

#[test]
fn c_a_stopped_origin_opens_the_breaker_and_serves_stale() {
    if !tools_available("c_a_stopped_origin_opens_the_breaker_and_serves_stale") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = build_image(
        &work.path().join("app"),
        "v1",
        &ImageSpec::new(1203, 2, 5000),
    );
    let mut origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &url)], "origin.test", "1s");
    let m = mirror.host();
    skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join("warm")).unwrap();
    let before = Scrape::of(&m);
    assert_eq!(before.sum("oci_cache_breaker_open", &[]), 0.0);
    assert_eq!(before.sum("oci_cache_stale_served_total", &[]), 0.0);

    origin.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let got = skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join("stale")).unwrap();
    assert_eq!(got.digest, app.digest);
    // Connection refused counts as a failure: a few more open the breaker.
    for _ in 0..3 {
        http::request(
            &m,
            "HEAD",
            "/v2/e2e/other/manifests/v1",
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .unwrap();
    }
    let after = Scrape::of(&m);
    assert!(after.sum("oci_cache_stale_served_total", &[]) > 0.0);
    assert!(
        after.sum("oci_cache_requests_total", &[("cache", "stale")]) > 0.0,
        "stale answers are labelled cache=stale"
    );
    assert_eq!(
        after.sum("oci_cache_breaker_open", &[]),
        1.0,
        "the origin's one endpoint is open"
    );
}

#[test]
fn d_metrics_listen_moves_metrics_off_the_main_listener() {
    if !tools_available("d_metrics_listen_moves_metrics_off_the_main_listener") {
        return;
    }
    let origin = Origin::start();
    let url = origin.url();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mirror = Mirror::start_with_args(
        &[
            "--storage-dir",
            "{dir}/storage",
            "--upstream",
            &format!("origin.test={url}"),
            "--default-upstream",
            "origin.test",
            "--metrics-listen",
            &metrics,
        ],
        &[],
    );
    let m = mirror.host();
    assert_eq!(http::request(&m, "GET", "/v2/", &[]).unwrap().status, 200);
    let main = http::request(&m, "GET", "/metrics", &[]).unwrap();
    assert_eq!(
        main.status, 404,
        "the main listener does not serve /metrics"
    );
    let s = Scrape::of(&metrics);
    assert!(
        s.sum("oci_cache_requests_total", &[("route", "ping")]) >= 1.0,
        "the separate listener serves the same metrics"
    );
    let other = http::request(&metrics, "GET", "/v2/", &[]).unwrap();
    assert_eq!(
        other.status, 404,
        "the metrics listener serves no registry API"
    );
}

#[test]
fn e_readyz_says_why_when_storage_cannot_be_written() {
    if !tools_available("e_readyz_says_why_when_storage_cannot_be_written") {
        return;
    }
    let origin = Origin::start();
    let url = origin.url();
    let mirror = Mirror::start_with_args(
        &[
            "--storage-dir",
            "{dir}/storage",
            "--upstream",
            &format!("origin.test={url}"),
            "--default-upstream",
            "origin.test",
        ],
        &[],
    );
    let m = mirror.host();
    let ready = wait_for_readyz(&m, 200);
    assert_eq!(String::from_utf8_lossy(&ready.body), "ready\n");
    assert_eq!(
        http::request(&m, "GET", "/healthz", &[]).unwrap().status,
        200
    );

    // Root ignores permissions, so break writes for real: the staging dir
    // every blob write starts in becomes a file.
    let staging = mirror.dir().join("storage").join("_staging");
    std::fs::remove_dir_all(&staging).unwrap();
    std::fs::write(&staging, b"not a directory").unwrap();
    let broken = wait_for_readyz(&m, 503);
    let reason = String::from_utf8_lossy(&broken.body).into_owned();
    assert!(
        reason.starts_with("not ready: storage probe failed") && reason.contains("staging file"),
        "{reason}"
    );
    assert_eq!(
        http::request(&m, "GET", "/healthz", &[]).unwrap().status,
        200,
        "the process is alive all the same"
    );
}

/// Polls `/readyz` until it answers `status` (the probe runs every 10 s).
fn wait_for_readyz(host: &str, status: u16) -> http::Response {
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let resp = http::request(host, "GET", "/readyz", &[]).unwrap();
        if resp.status == status || Instant::now() > deadline {
            assert_eq!(
                resp.status,
                status,
                "/readyz: {}",
                String::from_utf8_lossy(&resp.body)
            );
            return resp;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
