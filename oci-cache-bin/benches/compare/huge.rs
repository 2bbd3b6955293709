//! The memory check: a fresh oci-cache pulls a single-layer image of
//! `BENCH_HUGE_MIB` MiB cold, then warm, and its peak RSS (VmHWM, reset
//! between the two) is what the row shows. The point is that memory does not
//! grow with the size of a blob: at 8 GiB it must stay under 48 MiB.
//!
//! A pull here is the requests a client's pull makes (manifest by tag, then
//! config and layer by digest), each body streamed through SHA-256 and
//! checked against its digest but not stored: a skopeo pull would write a
//! third copy of the layer, and at 8 GiB the disk matters. The mirror serves
//! exactly what it serves skopeo (one GET per blob).
//!
//! Disk: the image is built on disk (streamed, never held in memory), pushed
//! to the origin and removed, so at most two copies of the layer exist at
//! once (the layout and the origin's, then the origin's and the mirror's).
//! The mirror's storage goes when it stops, the origin's at the end of the
//! bench.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::skopeo;
use crate::{log, peak_rss, reset_peak_rss, Table, ACCEPT, MIB};

/// Peak RSS and wall time of one mirror's cold and warm pull of the image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Huge {
    /// Size of the layer, MiB.
    pub(crate) mib: u64,
    pub(crate) cold_rss: f64,
    pub(crate) warm_rss: f64,
    pub(crate) cold_secs: f64,
    pub(crate) warm_secs: f64,
}

/// Builds and pushes the image to `origin`, then pulls it through a fresh
/// oci-cache cold and warm. `None` when `mib` is 0 (the check is off).
pub(crate) fn measure(origin: &Origin, work: &Path, mib: u64) -> Option<Huge> {
    if mib == 0 {
        return None;
    }
    log(&format!(
        "building and pushing a {mib} MiB single-layer image"
    ));
    let huge = build_image(&work.join("huge"), "v1", &ImageSpec::new(300, 1, mib << 20));
    skopeo::push(&huge, &origin.host(), "bench/huge:v1");
    let _ = std::fs::remove_dir_all(work.join("huge"));
    let mirror = Mirror::start_oci_cache(&[("origin", &origin.url())], "origin", "5m");
    let pid = mirror.pid();
    reset_peak_rss(pid);
    log("oci-cache: cold pull of the huge image");
    let cold = pull_streamed(&mirror.host(), "bench/huge", &huge);
    let cold_rss = peak_rss(pid) as f64;
    reset_peak_rss(pid);
    log("oci-cache: warm pull of the huge image");
    let warm = pull_streamed(&mirror.host(), "bench/huge", &huge);
    let warm_rss = peak_rss(pid) as f64;
    Some(Huge {
        mib,
        cold_rss,
        warm_rss,
        cold_secs: cold.as_secs_f64(),
        warm_secs: warm.as_secs_f64(),
    })
}

/// The GETs of a pull of `repo:v1` (an image of `layout`) from `host`, one
/// after the other, each body hashed and checked, none stored.
fn pull_streamed(host: &str, repo: &str, layout: &Layout) -> Duration {
    let start = Instant::now();
    let image = &layout.images[0];
    let gets = std::iter::once(("manifests/v1".to_owned(), layout.digest.clone())).chain(
        image
            .blobs()
            .into_iter()
            .map(|b| (format!("blobs/{}", b.digest), b.digest)),
    );
    for (path, want) in gets {
        let url = format!("http://{host}/v2/{repo}/{path}");
        assert_eq!(get_sha256(&url), want, "GET {url}");
    }
    start.elapsed()
}

/// `sha256:<hex>` of the body of `GET url` (curl, streamed in 1 MiB reads).
fn get_sha256(url: &str) -> String {
    let mut curl = Command::new("curl")
        .args(["-sSf", "-H", ACCEPT, url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut body = curl.stdout.take().unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = body.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    assert!(curl.wait().unwrap().success(), "curl {url} failed");
    format!("sha256:{:x}", hasher.finalize())
}

impl Huge {
    /// Adds this check's row to `table`.
    pub(crate) fn add_to(&self, table: &mut Table) {
        table.row(
            &format!(
                "peak RSS, {} MiB single layer: cold pull / warm pull",
                self.mib
            ),
            "—".into(),
            "—".into(),
            format!(
                "{:.1} / {:.1} MiB ({:.1} s / {:.1} s)",
                self.cold_rss / MIB,
                self.warm_rss / MIB,
                self.cold_secs,
                self.warm_secs
            ),
            "—".into(),
            "< 48 MiB",
        );
    }
}

/// `BENCH_ONLY=huge`: the memory check alone, against an origin of its own
/// (no corpus, no registry:2), printed as the one row of the table.
pub(crate) fn only(work: &Path, mib: u64) -> Option<Huge> {
    let origin = Origin::start();
    measure(&origin, work, mib)
}
