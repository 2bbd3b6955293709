//! Pulls with skopeo through a host, and what they moved.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::image::Layout;
use crate::support::registry::Origin;
use crate::support::skopeo;

/// Bytes a full pull of `layout` moves: manifests (and index) plus every blob.
pub(crate) fn image_bytes(layout: &Layout) -> u64 {
    let index = if layout.images.len() > 1 {
        std::fs::metadata(layout.blob_path(&layout.digest))
            .unwrap()
            .len()
    } else {
        0
    };
    index
        + layout
            .images
            .iter()
            .map(|i| i.manifest.size + i.blobs().iter().map(|b| b.size).sum::<u64>())
            .sum::<u64>()
}

/// Pull `host/repo_tag` into a fresh dir under `work`, check the digest, remove the copy.
pub(crate) fn pull(host: &str, repo_tag: &str, want: &str, work: &Path) -> Duration {
    let dest = unique_dir(work);
    let copied = skopeo::copy(&format!("{host}/{repo_tag}"), &dest).unwrap();
    assert_eq!(copied.digest, want, "pull {host}/{repo_tag}");
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::remove_file(dest.with_extension("digest"));
    copied.elapsed
}

pub(crate) fn unique_dir(work: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    work.join(format!("pull-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// `n` concurrent pulls; the wall time until the last one ends.
pub(crate) fn concurrent_pulls(
    host: &str,
    repo_tag: &str,
    want: &str,
    work: &Path,
    n: usize,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| pull(host, repo_tag, want, work)))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    start.elapsed()
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Origin bytes served for whatever `f` does through a mirror, counted once
/// the mirror has gone idle (the access log stops growing).
pub(crate) fn origin_bytes_during<T>(origin: &Origin, f: impl FnOnce() -> T) -> (T, u64) {
    let before = origin.bytes_served();
    let out = f();
    std::thread::sleep(Duration::from_secs(1));
    (out, origin.bytes_served() - before)
}
