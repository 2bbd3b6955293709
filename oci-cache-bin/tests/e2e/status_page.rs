//! Issue 26 item 2: the status page in a real browser. skopeo pulls an image
//! from docker-registry through the `oci-cache` binary; Debian's headless
//! Chromium loads `/`, the figures it shows are checked against `/metrics`,
//! and screenshots (laptop and phone widths) are kept under
//! `target/test-artifacts/status-page/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::evict::serve_args;
use super::metrics::Scrape;
use crate::support::image::{build_image, ImageSpec};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{skopeo, these_tools_available};

const CAP: u64 = 256 * 1024 * 1024;

/// `target/test-artifacts/status-page`, beside the test binary's profile dir.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/main-…
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under target/<profile>/deps");
    let dir = target.join("test-artifacts/status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args` (a private profile in
/// `profile`; no sandbox, as the tests run as root), returning stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The exact value the page shows for `figure` (its `data-value`).
fn shown(dom: &str, figure: &str) -> u64 {
    let needle = format!("data-figure=\"{figure}\" data-value=\"");
    let start = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("{figure} is not on the page: {dom}"))
        + needle.len();
    let end = start + dom[start..].find('"').unwrap();
    dom[start..end].parse().unwrap()
}

/// A figure of `scrape` as a whole number (every figure here is one).
fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape.sum(name, labels) as u64
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 4096 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn chromium_shows_the_figures_of_metrics_after_real_pulls() {
    let test = "chromium_shows_the_figures_of_metrics_after_real_pulls";
    if !these_tools_available(test, &["docker-registry", "skopeo", "chromium"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = build_image(
        &work.path().join("app"),
        "v1",
        &ImageSpec::new(2601, 2, 200_000),
    );
    let origin = Origin::start();
    skopeo::push(&app, &origin.host(), "e2e/app:v1");
    let args = serve_args(&CAP.to_string(), &origin);
    let mirror = Mirror::start_oci_cache_args(&args);
    let m = mirror.host();
    for pass in ["cold", "warm"] {
        let got = skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join(pass)).unwrap();
        assert_eq!(got.digest, app.digest);
    }

    let url = format!("http://{m}/");
    let profile = work.path().join("chromium");
    let dom = chromium(&profile, &url, &["--dump-dom"]);
    let scrape = Scrape::of(&m);

    // Content bytes and storage do not move with page loads and scrapes.
    let served = metric(
        &scrape,
        "oci_cache_served_bytes_total",
        &[("route", "blob")],
    ) + metric(
        &scrape,
        "oci_cache_served_bytes_total",
        &[("route", "manifest")],
    );
    let fetched = metric(&scrape, "oci_cache_upstream_bytes_total", &[]);
    let blobs: u64 = app.images[0].blobs().iter().map(|b| b.size).sum();
    assert!(
        served >= 2 * blobs,
        "two pulls served {served}, blobs {blobs}"
    );
    assert!(fetched >= blobs && fetched < served, "{fetched}");
    assert_eq!(shown(&dom, "bytes_served"), served);
    assert_eq!(shown(&dom, "bytes_fetched"), fetched);
    assert_eq!(shown(&dom, "bytes_saved"), served - fetched);
    assert_eq!(
        shown(&dom, "stored_bytes"),
        metric(&scrape, "oci_cache_storage_bytes", &[])
    );
    assert_eq!(
        shown(&dom, "stored_objects"),
        metric(&scrape, "oci_cache_storage_objects", &[])
    );
    assert_eq!(shown(&dom, "max_size"), CAP);
    assert_eq!(shown(&dom, "fills_in_flight"), 0);
    assert_eq!(
        shown(&dom, "upstream_bytes"),
        metric(
            &scrape,
            "oci_cache_upstream_bytes_total",
            &[("upstream", "docker.io")]
        )
    );
    assert!(dom.contains("docker.io/e2e/app"), "{dom}");
    assert!(dom.contains("<title>oci-cache status</title>"));

    let dir = artifact_dir();
    for (name, size) in [("laptop", "1280,1000"), ("phone", "390,1400")] {
        let shot = dir.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&shot);
        chromium(
            &profile,
            &url,
            &[
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size={size}"),
            ],
        );
        assert!(is_png(&shot), "no screenshot at {}", shot.display());
        eprintln!("status page screenshot: {}", shot.display());
    }
}
