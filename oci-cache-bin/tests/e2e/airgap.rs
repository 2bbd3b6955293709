//! Issue 14: `warm`, `verify`, `export` and `import` against a real origin
//! (docker-registry) with skopeo as the client, and `serve --offline` on
//! the storage they filled.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fixtures::{multiarch_image, small_image};
use crate::support::image::Layout;
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

/// Runs `oci-cache ARGS` to completion (stdout/stderr are pipes: no progress bars).
pub(super) fn oci_cache(args: &[&str]) -> Output {
    let out = Command::new(oci_cache_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    eprintln!(
        "$ oci-cache {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--storage-dir DIR` plus both upstream names routed to `origin_url`
/// (`a.test` for full names, `docker.io` for familiar ones).
fn config_args(storage: &Path, origin_url: &str) -> Vec<String> {
    vec![
        "--storage-dir".into(),
        storage.display().to_string(),
        "--upstream".into(),
        format!("a.test={origin_url}"),
        "--upstream".into(),
        format!("docker.io={origin_url}"),
        "--default-upstream".into(),
        "a.test".into(),
    ]
}

/// `oci-cache SUBCOMMAND CONFIG... EXTRA...`.
fn command(subcommand: &str, config: &[String], extra: &[&str]) -> Output {
    let mut args = vec![subcommand];
    args.extend(strs(config));
    args.extend_from_slice(extra);
    oci_cache(&args)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `skopeo copy --all --preserve-digests SRC DEST` (plain HTTP), returning
/// the copied top-level digest.
fn skopeo_copy(src: &str, dest: &str) -> Result<String, String> {
    let digest_file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
        ])
        .arg("--src-tls-verify=false")
        .arg("--digestfile")
        .arg(digest_file.path())
        .args([src, dest])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "skopeo copy {src} {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(std::fs::read_to_string(digest_file.path())
        .unwrap()
        .trim()
        .to_owned())
}

/// The origin for both tests: a multi-arch index, a single image (also
/// named by digest), a Docker schema 2 image and a Docker Hub "official" image.
struct Images {
    origin: Origin,
    multi: Layout,
    app: Layout,
    /// Digest of the schema 2 manifest as the origin stored it.
    docker_digest: String,
    alpine: Layout,
    _work: tempfile::TempDir,
}

fn images(seed: u64) -> Images {
    let work = tempfile::tempdir().unwrap();
    let multi = multiarch_image(&work.path().join("multi"), seed);
    let app = small_image(&work.path().join("app"), seed + 10);
    let docker = small_image(&work.path().join("docker"), seed + 20);
    let alpine = small_image(&work.path().join("alpine"), seed + 30);
    let origin = Origin::start();
    let host = origin.host();
    skopeo::push(&multi, &host, "e2e/multi:v1");
    skopeo::push(&app, &host, "e2e/app:v1");
    skopeo::push(&alpine, &host, "library/alpine:3.20");
    // Converted to Docker schema 2 (skopeo gzips the layers on the way).
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--format", "v2s2"])
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:v1", docker.dir.display()))
        .arg(format!("docker://{host}/e2e/docker:v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docker_digest = origin.manifest_digest("e2e/docker", "v1");
    let resp = crate::support::http::request(
        &host,
        "HEAD",
        "/v2/e2e/docker/manifests/v1",
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
    )
    .unwrap();
    assert_eq!(
        resp.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    Images {
        origin,
        multi,
        app,
        docker_digest,
        alpine,
        _work: work,
    }
}

/// A blob file in the filesystem storage.
fn stored_blob(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Flips the first byte of a file: same size, different digest.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn airgap_warm_verify_then_serve_offline() {
    if !tools_available("airgap_warm_verify_then_serve_offline") {
        return;
    }
    let mut img = images(400);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let list = work.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# what `talosctl images default` prints, plus comments\n\
             a.test/e2e/multi:v1\n\
             a.test/e2e/app@{}   # digest only\n\
             a.test/e2e/docker:v1\n\n\
             alpine:3.20\n",
            img.app.digest
        ),
    )
    .unwrap();
    let config = config_args(&storage, &img.origin.url());
    let list_arg = list.display().to_string();

    let out = command("warm", &config, &["--jobs", "3", "-f", &list_arg]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.matches("warmed ").count(), 4, "{text}");
    assert!(
        text.contains("warmed docker.io/library/alpine:3.20"),
        "{text}"
    );
    assert!(text.contains("warm: 4 of 4 images ready"), "{text}");
    // Every blob of every platform came from the origin exactly once.
    let counts = img.origin.blob_get_counts(0);
    for blob in img.multi.all_blobs().iter().chain(&img.app.all_blobs()) {
        assert_eq!(counts.get(&blob.digest), Some(&1), "{}", blob.digest);
    }

    // A second warm fetches nothing.
    let before = img.origin.blob_gets().len();
    let out = command("warm", &config, &["-f", &list_arg]);
    assert!(stdout(&out).contains("(0 B fetched)"), "{}", stdout(&out));
    assert_eq!(
        img.origin.blob_gets().len(),
        before,
        "second warm refetched blobs"
    );

    let verify = |extra: &[&str]| {
        let mut args = vec!["-f", list_arg.as_str()];
        args.extend_from_slice(extra);
        command("verify", &config, &args)
    };
    let out = verify(&[]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count(),
        4
    );

    // Corrupt one layer of the arm64 image and remove the amd64 config.
    let bad_layer = img.multi.images[1].layers[0].digest.clone();
    let gone = img.multi.images[0].config.digest.clone();
    corrupt(&stored_blob(&storage, &bad_layer));
    std::fs::remove_file(stored_blob(&storage, &gone)).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("corrupt blob {bad_layer}")),
        "{text}"
    );
    assert!(text.contains(&format!("missing blob {gone}")), "{text}");
    assert!(
        text.contains("verify: 3 of 4 images complete and intact"),
        "{text}"
    );

    // --repair refetches both from the origin; then all is well.
    let out = verify(&["--repair"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let counts = img.origin.blob_get_counts(0);
    assert_eq!(counts.get(&bad_layer), Some(&2));
    assert_eq!(counts.get(&gone), Some(&2));

    // Origin gone: the offline mirror serves every listed image.
    img.origin.stop();
    let mut serve_args = strs(&config);
    serve_args.push("--offline");
    let mirror = Mirror::start_with_args(&serve_args, &[]);
    let m = mirror.host();
    // What it does not hold is "not cached", by name: a 404, not a 503.
    for (path, what) in [
        (
            "/v2/library/nginx/manifests/1.27?ns=docker.io",
            "docker.io/library/nginx:1.27",
        ),
        (
            "/v2/a.test/e2e/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "a.test/e2e/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        let resp = crate::support::http::request(&m, "GET", path, &[]).unwrap();
        let body = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, 404, "{path}: {body}");
        assert!(
            body.contains(&format!("not cached (offline): {what}")),
            "{path}: {body}"
        );
    }
    let dest = |name: &str| format!("dir:{}", work.path().join(name).display());
    assert_eq!(
        skopeo_copy(&format!("docker://{m}/a.test/e2e/multi:v1"), &dest("multi")).unwrap(),
        img.multi.digest
    );
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/a.test/e2e/app@{}", img.app.digest),
            &dest("app")
        )
        .unwrap(),
        img.app.digest
    );
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/a.test/e2e/docker:v1"),
            &dest("docker")
        )
        .unwrap(),
        img.docker_digest
    );
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/docker.io/library/alpine:3.20"),
            &dest("alpine")
        )
        .unwrap(),
        img.alpine.digest
    );
}

/// Every file under `dir`, as names relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn airgap_export_import_round_trip() {
    if !tools_available("airgap_export_import_round_trip") {
        return;
    }
    let mut img = images(500);
    let work = tempfile::tempdir().unwrap();
    let site_a = work.path().join("site-a");
    let layout = work.path().join("layout");
    let list = work.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "a.test/e2e/multi:v1\na.test/e2e/app@{}\na.test/e2e/docker:v1\nalpine:3.20\n",
            img.app.digest
        ),
    )
    .unwrap();
    let list_arg = list.display().to_string();
    let config_a = config_args(&site_a, &img.origin.url());
    assert!(command("warm", &config_a, &["-f", &list_arg])
        .status
        .success());

    // Export from the cache alone: the origin is gone.
    img.origin.stop();
    let layout_arg = layout.display().to_string();
    let out = command(
        "export",
        &config_a,
        &["--offline", "-f", &list_arg, "--output", &layout_arg],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("export: 4 of 4 images written"));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    let app_ref = format!("a.test/e2e/app@{}", img.app.digest);
    assert_eq!(
        names,
        [
            "a.test/e2e/multi:v1",
            app_ref.as_str(),
            "a.test/e2e/docker:v1",
            "docker.io/library/alpine:3.20"
        ]
    );

    // Other tools read it: skopeo copies out the origin's digests.
    let oci = |name: &str| format!("oci:{}:{name}", layout.display());
    let dir = |name: &str| format!("dir:{}", work.path().join(name).display());
    assert_eq!(
        skopeo_copy(&oci("a.test/e2e/multi:v1"), &dir("x-multi")).unwrap(),
        img.multi.digest
    );
    assert_eq!(
        skopeo_copy(&oci(&app_ref), &dir("x-app")).unwrap(),
        img.app.digest
    );
    // The schema 2 image keeps its Docker manifest (its digest is the
    // origin's); skopeo's `oci:` reader only looks at OCI-typed entries and
    // does not see it, which it says plainly.
    let refused = skopeo_copy(&oci("a.test/e2e/docker:v1"), &dir("x-docker")).unwrap_err();
    assert!(refused.contains("no descriptor found"), "{refused}");

    // Across the gap: import into an empty storage, then serve offline.
    let site_b = work.path().join("site-b");
    let config_b = config_args(&site_b, "http://127.0.0.1:9");
    let out = command("import", &config_b, &[&layout_arg]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("import: 4 of 4 images imported"));
    let mut serve_args = strs(&config_b);
    serve_args.push("--offline");
    let mirror = Mirror::start_with_args(&serve_args, &[]);
    let m = mirror.host();
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/a.test/e2e/multi:v1"),
            &dir("b-multi")
        )
        .unwrap(),
        img.multi.digest
    );
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/a.test/e2e/docker:v1"),
            &dir("b-docker")
        )
        .unwrap(),
        img.docker_digest
    );
    assert_eq!(
        skopeo_copy(
            &format!("docker://{m}/docker.io/library/alpine:3.20"),
            &dir("b-alpine")
        )
        .unwrap(),
        img.alpine.digest
    );
    drop(mirror);

    // The same through one tar file, checked by verify (storage only).
    let tar = work.path().join("cache.tar");
    let tar_arg = tar.display().to_string();
    let out = command(
        "export",
        &config_a,
        &["--offline", "-f", &list_arg, "--tar", &tar_arg],
    );
    assert!(out.status.success());
    // Messages name the archive, not the directory it was staged in.
    assert!(
        stdout(&out).contains(&format!("images written to {tar_arg}\n")),
        "{}",
        stdout(&out)
    );
    let site_c = work.path().join("site-c");
    let config_c = config_args(&site_c, "http://127.0.0.1:9");
    let out = command("import", &config_c, &["--tar", &tar_arg]);
    assert!(out.status.success());
    let first = stdout(&out);
    assert!(
        first.contains(&format!("images imported from {tar_arg}\n")),
        "{first}"
    );
    // A second import says what it skipped.
    let out = command("import", &config_c, &["--tar", &tar_arg]);
    assert!(out.status.success());
    let second = stdout(&out);
    assert!(
        second.contains("(every blob already cached; skipped)"),
        "{second}"
    );
    assert!(
        second.contains(&format!("images imported from {tar_arg}; ")),
        "{second}"
    );
    assert!(
        second.contains("already in the cache were skipped"),
        "{second}"
    );
    assert!(command("verify", &config_c, &["-f", &list_arg])
        .status
        .success());

    // One altered blob of the app image: refused, and nothing of it stays.
    let bad = img.app.images[0].layers[1].digest.clone();
    corrupt(
        &layout
            .join("blobs/sha256")
            .join(bad.trim_start_matches("sha256:")),
    );
    let site_d = work.path().join("site-d");
    let config_d = config_args(&site_d, "http://127.0.0.1:9");
    let out = command("import", &config_d, &[&layout_arg]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&format!("FAILED {app_ref}")), "{text}");
    assert!(text.contains(&bad), "{text}");
    assert!(text.contains("import: 3 of 4 images imported"), "{text}");
    let stored = files_under(&site_d).join("\n");
    for blob in img.app.all_blobs() {
        let hex = blob.digest.trim_start_matches("sha256:");
        assert!(
            !stored.contains(hex),
            "{} of the refused image is stored",
            blob.digest
        );
    }
    assert!(!stored.contains(img.app.digest.trim_start_matches("sha256:")));
    // The other images are whole.
    let out = command("verify", &config_d, &["a.test/e2e/multi:v1", "alpine:3.20"]);
    assert!(out.status.success());
}

#[test]
fn airgap_platform_choice_and_skopeo_layouts() {
    if !tools_available("airgap_platform_choice_and_skopeo_layouts") {
        return;
    }
    let img = images(600);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let config = config_args(&storage, &img.origin.url());

    // Dry run: resolves upstream, stores nothing.
    let out = command("warm", &config, &["--dry-run", "a.test/e2e/multi:v1"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("would fetch 6 blobs"),
        "{}",
        stdout(&out)
    );
    assert_eq!(img.origin.blob_gets().len(), 0);

    // One platform only: verify of that platform passes, of all platforms names the rest.
    let out = command(
        "warm",
        &config,
        &["--platform", "linux/amd64", "a.test/e2e/multi:v1"],
    );
    assert!(out.status.success());
    let amd64 = &img.multi.images[0];
    let counts = img.origin.blob_get_counts(0);
    assert_eq!(counts.len(), amd64.blobs().len(), "{counts:?}");
    let out = command(
        "verify",
        &config,
        &["--platform", "linux/amd64", "a.test/e2e/multi:v1"],
    );
    assert!(out.status.success());
    let out = command("verify", &config, &["a.test/e2e/multi:v1"]);
    assert_eq!(out.status.code(), Some(1));
    let arm64 = &img.multi.images[1].manifest.digest;
    assert!(
        stdout(&out).contains(&format!("missing manifest {arm64}")),
        "{}",
        stdout(&out)
    );

    // A one-platform export carries the whole index but one platform's
    // manifest; import takes what is there.
    let partial = work.path().join("amd64-only");
    let partial_arg = partial.display().to_string();
    let out = command(
        "export",
        &config,
        &[
            "--offline",
            "--platform",
            "linux/amd64",
            "a.test/e2e/multi:v1",
            "-o",
            &partial_arg,
        ],
    );
    assert!(out.status.success());
    let site = work.path().join("amd64-site");
    let config_f = config_args(&site, "http://127.0.0.1:9");
    assert!(command("import", &config_f, &[&partial_arg])
        .status
        .success());
    let out = command(
        "verify",
        &config_f,
        &["--platform", "linux/amd64", "a.test/e2e/multi:v1"],
    );
    assert!(out.status.success());

    // warm beside a running server on the same storage: the server then
    // serves what warm fetched, and the origin saw each blob once.
    let mirror = Mirror::start_with_args(&strs(&config), &[]);
    assert!(command("warm", &config, &["a.test/e2e/app:v1"])
        .status
        .success());
    let got = skopeo_copy(
        &format!("docker://{}/a.test/e2e/app:v1", mirror.host()),
        &format!("dir:{}", work.path().join("served").display()),
    )
    .unwrap();
    assert_eq!(got, img.app.digest);
    let counts = img.origin.blob_get_counts(0);
    for blob in img.app.all_blobs() {
        assert_eq!(counts.get(&blob.digest), Some(&1), "{}", blob.digest);
    }
    drop(mirror);

    // A layout skopeo wrote, with a bare tag as its name: imported under --repository.
    let layout = work.path().join("from-skopeo");
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
        ])
        .arg("--src-tls-verify=false")
        .arg(format!("docker://{}/e2e/app:v1", img.origin.host()))
        .arg(format!("oci:{}:v7", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let empty = work.path().join("empty");
    let config_e = config_args(&empty, "http://127.0.0.1:9");
    let layout_arg = layout.display().to_string();
    let out = command("import", &config_e, &[&layout_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("pass --repository"),
        "{}",
        stdout(&out)
    );
    let out = command(
        "import",
        &config_e,
        &[&layout_arg, "--repository", "a.test/e2e/app"],
    );
    assert!(out.status.success());
    let out = command("verify", &config_e, &["a.test/e2e/app:v7"]);
    assert!(out.status.success());
}

/// Not a pass/fail test: the throughput figure of `warm` next to a plain
/// parallel `skopeo copy` of the same list from the same origin
/// (`scripts/bench-warm` runs it against the release binary).
///
/// `BENCH_WARM_IMAGES` images of `BENCH_WARM_LAYERS` × `BENCH_WARM_LAYER_MIB`
/// (default 4 × 4 × 8 MiB = 128 MiB), both sides 4 at a time.
#[test]
#[ignore = "benchmark: run with scripts/bench-warm"]
fn bench_warm_vs_parallel_skopeo() {
    use super::fixtures::env_or;
    use crate::support::image::{build_image, ImageSpec};
    use std::time::Instant;

    if !tools_available("bench_warm_vs_parallel_skopeo") {
        return;
    }
    let images = env_or("BENCH_WARM_IMAGES", 4usize);
    let layers = env_or("BENCH_WARM_LAYERS", 4usize);
    let mib = env_or("BENCH_WARM_LAYER_MIB", 8u64);
    let work = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let mut refs = Vec::new();
    for i in 0..images {
        let layout = build_image(
            &work.path().join(format!("img{i}")),
            "v1",
            &ImageSpec::new(900 + i as u64, layers, mib << 20),
        );
        skopeo::push(&layout, &origin.host(), &format!("bench/img{i}:v1"));
        refs.push(format!("bench/img{i}:v1"));
    }
    let total_mib = (images * layers) as f64 * mib as f64;

    let list = work.path().join("list.txt");
    let lines: Vec<String> = refs.iter().map(|r| format!("a.test/{r}")).collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let config = config_args(&work.path().join("storage"), &origin.url());
    let start = Instant::now();
    let out = command(
        "warm",
        &config,
        &["--jobs", "4", "-f", &list.display().to_string()],
    );
    let warm = start.elapsed();
    assert!(out.status.success());

    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let src = format!("docker://{}/{r}", origin.host());
                let dest = format!("dir:{}", work.path().join(format!("sk{i}")).display());
                s.spawn(move || skopeo_copy(&src, &dest).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    let skopeo = start.elapsed();
    let rate = |d: std::time::Duration| total_mib / d.as_secs_f64();
    eprintln!(
        "\nBENCH warm vs skopeo: {images} images x {layers} x {mib} MiB = {total_mib} MiB\n\
         BENCH   oci-cache warm --jobs 4:      {:>6.2} s  {:>7.1} MiB/s\n\
         BENCH   skopeo copy, 4 in parallel:   {:>6.2} s  {:>7.1} MiB/s\n",
        warm.as_secs_f64(),
        rate(warm),
        skopeo.as_secs_f64(),
        rate(skopeo)
    );
}

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A one-image layout written by hand, named `a.test/e2e/hand:v1` in an
/// `index.json` entry of `media_type`; returns the manifest and config digests.
fn hand_layout(dir: &Path, media_type: &str) -> (String, String) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = b"{}";
    let config_digest = sha256(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[]}}"#
    );
    let manifest_digest = sha256(manifest.as_bytes());
    for (digest, bytes) in [
        (&config_digest, &config[..]),
        (&manifest_digest, manifest.as_bytes()),
    ] {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "a.test/e2e/hand:v1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    (manifest_digest, config_digest)
}

/// The layout in `dir` as a tar, its config blob replaced by `link` (a
/// symlink or hard link entry to `target`) written by `add_link`.
fn tar_with_link(dir: &Path, tar: &Path, config: &str, kind: tar::EntryType, target: &str) {
    let mut builder = tar::Builder::new(std::fs::File::create(tar).unwrap());
    builder
        .append_path_with_name(dir.join("oci-layout"), "oci-layout")
        .unwrap();
    builder
        .append_path_with_name(dir.join("index.json"), "index.json")
        .unwrap();
    // A regular copy of the config, for a hard link to point at.
    builder
        .append_path_with_name(dir.join("oci-layout"), "spare")
        .unwrap();
    let config_name = format!("blobs/sha256/{}", config.trim_start_matches("sha256:"));
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!(
            "blobs/sha256/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        if name != config_name {
            builder.append_path_with_name(&path, &name).unwrap();
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(0);
    header.set_mode(0o644);
    builder
        .append_link(&mut header, &config_name, target)
        .unwrap();
    builder.finish().unwrap();
}

/// A crafted archive cannot make `import` read a file outside it, and
/// `export --tar` does not write through links planted where it writes.
/// Needs only the oci-cache binary.
#[test]
fn airgap_tar_links_are_refused_and_never_followed() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (manifest, config) = hand_layout(&layout, "application/vnd.oci.image.manifest.v1+json");
    // A file outside any archive that happens to hold the config's bytes
    // (for a real attack: any file whose digest the attacker knows).
    let outside = work.path().join("outside");
    std::fs::write(&outside, b"{}").unwrap();
    let cases = [
        (
            tar::EntryType::Symlink,
            outside.display().to_string(),
            "symbolic link",
        ),
        (tar::EntryType::Link, "spare".to_owned(), "hard link"),
    ];
    for (i, (kind, target, said)) in cases.into_iter().enumerate() {
        let tar = work.path().join(format!("crafted-{i}.tar"));
        tar_with_link(&layout, &tar, &config, kind, &target);
        let site = work.path().join(format!("site-{i}"));
        let config_site = config_args(&site, "http://127.0.0.1:9");
        let out = command(
            "import",
            &config_site,
            &["--tar", &tar.display().to_string()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}: {stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        assert!(stderr.contains("refused"), "{stderr}");
        let stored = files_under(&site).join("\n");
        assert!(
            !stored.contains(manifest.trim_start_matches("sha256:")),
            "{said}: the image was imported: {stored}"
        );
    }

    // Export --tar with links planted at the archive's name and at the name
    // a partial archive used to have: the files they point at stay as they were.
    let site = work.path().join("site-export");
    let config_site = config_args(&site, "http://127.0.0.1:9");
    let out = command("import", &config_site, &[&layout.display().to_string()]);
    assert!(out.status.success());
    let victim = work.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let tar = work.path().join("out.tar");
    for planted in [tar.clone(), tar.with_extension("partial")] {
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
    }
    let out = command(
        "export",
        &config_site,
        &[
            "--offline",
            "a.test/e2e/hand:v1",
            "--tar",
            &tar.display().to_string(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&tar).unwrap().is_file());
    let again = work.path().join("site-again");
    let out = command(
        "import",
        &config_args(&again, "http://127.0.0.1:9"),
        &["--tar", &tar.display().to_string()],
    );
    assert!(stdout(&out).contains("import: 1 of 1 images imported"));
}

/// A layout entry that is not a manifest media type is not imported: the
/// cache would serve it with that type as its Content-Type.
#[test]
fn airgap_import_refuses_a_manifest_that_is_not_a_manifest_media_type() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (manifest, _) = hand_layout(&layout, "text/html");
    let site = work.path().join("site");
    let out = command(
        "import",
        &config_args(&site, "http://127.0.0.1:9"),
        &[&layout.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAILED a.test/e2e/hand:v1"), "{text}");
    assert!(
        text.contains("text/html is not a manifest media type"),
        "{text}"
    );
    assert!(text.contains("import: 0 of 1 images imported"), "{text}");
    let stored = files_under(&site).join("\n");
    assert!(
        !stored.contains(manifest.trim_start_matches("sha256:")),
        "{stored}"
    );
}
