//! Issue 13: bounded disk end to end. The origin (docker-registry) plays
//! docker.io; skopeo pulls through `oci-cache serve --max-size … --pin
//! 'docker.io/library/alpine:*'`: the store stays under the cap, the pinned
//! and the latest image are served without the origin, the older large image
//! was evicted and comes back, pulls during eviction succeed, and `purge`
//! makes the next pull a miss. Once on the filesystem, once on S3 (moto).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::http;
use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::Origin;
use crate::support::s3::S3Server;
use crate::support::{skopeo, tools_available};

const MIB: u64 = 1 << 20;

/// The three images: a small pinned one and two large ones.
struct Images {
    alpine: Layout,
    first: Layout,
    second: Layout,
}

fn images(work: &Path, seed: u64, small: u64, layers: usize, layer: u64) -> Images {
    Images {
        alpine: build_image(
            &work.join("alpine"),
            "3.20",
            &ImageSpec::new(seed, 1, small),
        ),
        first: build_image(
            &work.join("first"),
            "v1",
            &ImageSpec::new(seed + 1, layers, layer),
        ),
        second: build_image(
            &work.join("second"),
            "v1",
            &ImageSpec::new(seed + 2, layers, layer),
        ),
    }
}

fn origin_with(images: &Images) -> Origin {
    Origin::with_images(&[
        (&images.alpine, "library/alpine:3.20"),
        (&images.first, "library/first:v1"),
        (&images.second, "library/second:v1"),
    ])
}

fn pull(m: &str, repo_tag: &str, dest: &Path, want: &Layout) {
    let got = skopeo::copy(&format!("{m}/{repo_tag}"), dest)
        .unwrap_or_else(|e| panic!("pull {repo_tag}: {e}"));
    assert_eq!(got.digest, want.digest, "{repo_tag}");
}

fn layer_digests(layout: &Layout) -> Vec<String> {
    layout.images[0]
        .layers
        .iter()
        .map(|b| b.digest.clone())
        .collect()
}

/// Polls the stored bytes every 50 ms until stopped; returns the longest
/// time they stayed over `cap` in one stretch, and the peak.
struct Watch {
    stop: Arc<AtomicBool>,
    result: Arc<Mutex<(Duration, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(cap: u64, stored: impl Fn() -> u64 + Send + 'static) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&result));
        let thread = std::thread::spawn(move || {
            let mut over_since: Option<Instant> = None;
            while !s.load(Ordering::Relaxed) {
                let bytes = stored();
                let mut result = r.lock().unwrap();
                result.1 = result.1.max(bytes);
                if bytes > cap {
                    let since = *over_since.get_or_insert_with(Instant::now);
                    result.0 = result.0.max(since.elapsed());
                } else {
                    over_since = None;
                }
                drop(result);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watch {
            stop,
            result,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Duration, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        *self.result.lock().unwrap()
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sizes of the objects in an S3 bucket (moto lists up to 1000 keys: plenty here).
fn bucket_bytes(host: &str, bucket: &str) -> u64 {
    let Ok(resp) = http::request(host, "GET", &format!("/{bucket}?list-type=2"), &[]) else {
        return 0;
    };
    String::from_utf8_lossy(&resp.body)
        .split("<Size>")
        .skip(1)
        .filter_map(|s| s.split_once("</Size>")?.0.parse::<u64>().ok())
        .sum()
}

/// Waits until `stored()` is at most `cap` (an eviction pass is under way).
fn wait_under(cap: u64, stored: &dyn Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bytes = stored();
        if bytes <= cap || Instant::now() > deadline {
            return bytes;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The scenario, for any storage: `serve_args` start the mirror, `stored`
/// measures the store, `has_blob` tells whether a digest is stored.
struct Scenario<'a> {
    work: &'a Path,
    images: &'a Images,
    origin: &'a Origin,
    cap: u64,
    mirror: &'a Mirror,
    storage_args: Vec<String>,
    stored: Arc<dyn Fn() -> u64 + Send + Sync>,
    has_blob: &'a (dyn Fn(&str) -> bool + Sync),
    env: Vec<(&'a str, &'a str)>,
}

impl Scenario<'_> {
    fn run(&self) {
        let m = self.mirror.host();
        let work = self.work;
        let stored = Arc::clone(&self.stored);
        let watch = Watch::start(self.cap, move || stored());

        pull(
            &m,
            "library/alpine:3.20",
            &work.join("alpine-cold"),
            &self.images.alpine,
        );
        pull(
            &m,
            "library/first:v1",
            &work.join("first-cold"),
            &self.images.first,
        );
        // Distinct last-use times: the second image is the more recent.
        std::thread::sleep(Duration::from_millis(1100));
        pull(
            &m,
            "library/second:v1",
            &work.join("second-cold"),
            &self.images.second,
        );
        let after = wait_under(self.cap, self.stored.as_ref());
        let (longest_over, peak) = watch.finish();
        assert!(after <= self.cap, "{after} bytes stored, cap {}", self.cap);
        assert!(
            longest_over < Duration::from_secs(5),
            "over the cap for {longest_over:?} in one stretch (peak {peak} bytes, cap {})",
            self.cap
        );

        // The first large image was evicted; the pinned one and the last one stay.
        let first_gone = layer_digests(&self.images.first)
            .iter()
            .filter(|d| !(self.has_blob)(d))
            .count();
        assert!(first_gone >= 1, "no layer of the first image was evicted");
        for digest in layer_digests(&self.images.alpine)
            .iter()
            .chain(&layer_digests(&self.images.second))
        {
            assert!((self.has_blob)(digest), "{digest} was evicted");
        }

        // Warm pulls of the pinned and of the last image: no blob from the origin.
        let before = self.origin.blob_gets().len();
        pull(
            &m,
            "library/alpine:3.20",
            &work.join("alpine-warm"),
            &self.images.alpine,
        );
        pull(
            &m,
            "library/second:v1",
            &work.join("second-warm"),
            &self.images.second,
        );
        let fetched: u64 = self.origin.blob_gets()[before..]
            .iter()
            .map(|r| r.bytes)
            .sum();
        assert_eq!(
            fetched, 0,
            "warm pulls fetched {fetched} blob bytes from the origin"
        );

        // The evicted image comes back (fetched again), while other pulls read
        // blobs that this very fill pushes out: every pull gets whole, verified blobs.
        std::thread::scope(|scope| {
            let first = scope.spawn(|| {
                pull(
                    &m,
                    "library/first:v1",
                    &work.join("first-again"),
                    &self.images.first,
                );
            });
            let readers: Vec<_> = (0..3)
                .map(|i| {
                    let (m, dest) = (&m, work.join(format!("second-during-{i}")));
                    scope.spawn(move || pull(m, "library/second:v1", &dest, &self.images.second))
                })
                .collect();
            let alpine = scope.spawn(|| {
                pull(
                    &m,
                    "library/alpine:3.20",
                    &work.join("alpine-during"),
                    &self.images.alpine,
                );
            });
            first.join().unwrap();
            readers.into_iter().for_each(|r| r.join().unwrap());
            alpine.join().unwrap();
        });
        // Layers fetched again (a layer over 16 MiB comes in several ranged GETs).
        let gets = &self.origin.blob_gets()[before..];
        let refetched = layer_digests(&self.images.first)
            .iter()
            .filter(|d| gets.iter().any(|r| r.path.contains(d.as_str())))
            .count();
        assert_eq!(
            refetched, first_gone,
            "the evicted layers of the first image were fetched again"
        );
        let after = wait_under(self.cap, self.stored.as_ref());
        assert!(
            after <= self.cap,
            "{after} bytes stored after the refetch, cap {}",
            self.cap
        );

        // purge (a separate process on the same storage): the next pull is a miss.
        let mut purge = Command::new(oci_cache_bin());
        purge
            .arg("purge")
            .args(&self.storage_args)
            .args(["--upstream", &format!("docker.io={}", self.origin.url())])
            .args(["--default-upstream", "docker.io", "alpine:3.20"])
            .envs(self.env.iter().copied());
        let out = purge.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "purge: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("purged 1 tag(s), 1 manifest(s), 2 blob(s)"),
            "{stdout}"
        );
        for digest in layer_digests(&self.images.alpine) {
            assert!(!(self.has_blob)(&digest), "{digest} survived the purge");
        }
        let before = self.origin.blob_gets().len();
        let manifests = self.origin.count("GET", "/v2/library/alpine/manifests/");
        pull(
            &m,
            "library/alpine:3.20",
            &work.join("alpine-purged"),
            &self.images.alpine,
        );
        assert_eq!(
            self.origin.blob_gets().len() - before,
            self.images.alpine.images[0].blobs().len(),
            "after purge every blob of the image comes from the origin"
        );
        assert_eq!(
            self.origin.count("GET", "/v2/library/alpine/manifests/"),
            manifests + 1,
            "after purge the tag is resolved at the origin again"
        );
    }
}

pub(super) fn serve_args(cap: &str, origin: &Origin) -> Vec<String> {
    [
        "--upstream",
        &format!("docker.io={}", origin.url()),
        "--default-upstream",
        "docker.io",
        "--tag-ttl",
        "5m",
        "--max-size",
        cap,
        "--pin",
        "docker.io/library/alpine:*",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn a_max_size_evicts_lru_keeps_pins_and_purge_forces_a_miss() {
    if !tools_available("a_max_size_evicts_lru_keeps_pins_and_purge_forces_a_miss") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // 2 MiB pinned, then two 120 MiB images (4 layers of 30 MiB) under a 150 MiB cap.
    let images = images(work.path(), 1300, 2 * MIB, 4, 30 * MIB);
    let origin = origin_with(&images);
    let mirror = Mirror::start_oci_cache_args(&serve_args("150MiB", &origin));
    let storage = mirror.dir().join("storage");
    let measured = storage.clone();
    let has_blob = |digest: &str| blob_path(&storage, digest).exists();
    Scenario {
        work: work.path(),
        images: &images,
        origin: &origin,
        cap: 150 * MIB,
        mirror: &mirror,
        storage_args: vec!["--storage-dir".into(), storage.display().to_string()],
        stored: Arc::new(move || dir_bytes(&measured)),
        has_blob: &has_blob,
        env: Vec::new(),
    }
    .run();
    assert!(mirror.log().contains("evicted least recently used blobs"));

    // gc: one pass offline with the same rules, here under a 5 MiB cap.
    let gc = |extra: &[&str]| {
        Command::new(oci_cache_bin())
            .arg("gc")
            .args(["--storage-dir", &storage.display().to_string()])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = gc(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("set --max-size"));
    let out = gc(&["--max-size", "5MiB", "--pin", "docker.io/library/alpine:*"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gc: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("evicted"), "{stdout}");
    for digest in layer_digests(&images.alpine) {
        assert!(has_blob(&digest), "gc evicted pinned {digest}");
    }
    for digest in layer_digests(&images.first)
        .iter()
        .chain(&layer_digests(&images.second))
    {
        assert!(!has_blob(digest), "gc left {digest} under a 5 MiB cap");
    }
    assert!(
        dir_bytes(&storage) <= 5 * MIB,
        "{} bytes after gc",
        dir_bytes(&storage)
    );
}

#[test]
fn b_max_size_on_s3_evicts_the_same_way() {
    if !tools_available("b_max_size_on_s3_evicts_the_same_way") {
        return;
    }
    let Some(s3) = S3Server::start("b_max_size_on_s3_evicts_the_same_way") else {
        return;
    };
    let bucket = "oci-cache-evict";
    s3.create_bucket(bucket);
    let work = tempfile::tempdir().unwrap();
    // Smaller on S3 (moto keeps objects in memory): 1 MiB pinned, 2 × 12 MiB, cap 16 MiB.
    let images = images(work.path(), 1310, MIB, 3, 4 * MIB);
    let origin = origin_with(&images);
    let config = format!(
        "[storage]\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\npath_style = true\n",
        s3.endpoint()
    );
    let config_path = work.path().join("s3.toml");
    std::fs::write(&config_path, &config).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "e2e"),
        ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    let mut args = serve_args("16MiB", &origin);
    args.extend(["--config".to_owned(), config_path.display().to_string()]);
    let mirror = Mirror::start_oci_cache_args_env(&args, &env);
    let host = s3.endpoint().trim_start_matches("http://").to_owned();
    let measured = host.clone();
    let has_blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        s3.keys(bucket)
            .iter()
            .any(|k| k == &format!("blobs/sha256/{}/{hex}", &hex[..2]))
    };
    Scenario {
        work: work.path(),
        images: &images,
        origin: &origin,
        cap: 16 * MIB,
        mirror: &mirror,
        storage_args: vec!["--config".into(), config_path.display().to_string()],
        stored: Arc::new(move || bucket_bytes(&measured, bucket)),
        has_blob: &has_blob,
        env: env.to_vec(),
    }
    .run();
    // Last-use times of an object store live in the access index.
    assert!(
        s3.keys(bucket)
            .iter()
            .any(|k| k.starts_with("access/sha256/"))
            || mirror.log().contains("evicted least recently used blobs"),
        "{:?}",
        s3.keys(bucket)
    );
}
