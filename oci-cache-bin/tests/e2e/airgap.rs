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
fn oci_cache(args: &[&str]) -> Output {
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
