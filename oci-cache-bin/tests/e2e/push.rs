//! Issue 15: hosted repositories (`--local-prefix local`) beside the cache,
//! pushed and pulled by real clients (skopeo, podman) and by raw HTTP, with
//! a docker-registry origin that must never see a request for them.

use std::path::{Path, PathBuf};

use super::fixtures::{multiarch_image, small_image};
use crate::support::dockerd::Dockerd;
use crate::support::http::{self, sha256_digest};
use crate::support::image::{build_image, Blob, ImageSpec, Layout};
use crate::support::mirror::{oci_cache, Mirror};
use crate::support::podman::Podman;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

/// The `image inspect --format` of podman and docker that prints the image
/// id (its config's digest): a push and pull back must keep it.
const IMAGE_ID: &str = "{{.Id}}";

/// A mirror with `local` hosted and `a.test` (the origin) as the default upstream,
/// storing in `storage` (a directory that outlives the process, for restarts).
fn hosted_mirror(origin: &Origin, storage: &Path) -> Mirror {
    hosted_mirror_with(origin, storage, &[], &[])
}

/// [`hosted_mirror`] with `extra` arguments and the files they name
/// (as [`Mirror::start_with_args`] takes them).
fn hosted_mirror_with(
    origin: &Origin,
    storage: &Path,
    extra: &[&str],
    dir_files: &[(&str, &str)],
) -> Mirror {
    let storage = storage.display().to_string();
    let upstream = format!("a.test={}", origin.url());
    let mut args = vec![
        "--storage-dir",
        &storage,
        "--upstream",
        &upstream,
        "--default-upstream",
        "a.test",
        "--local-prefix",
        "local",
    ];
    args.extend_from_slice(extra);
    Mirror::start_with_args(&args, dir_files)
}

/// A small image pushed to a new origin as `repo_tag`, and a hosted mirror
/// over that origin: the start of each test that pushes what the cache can
/// already serve. Fields drop in order, so the mirror stops before its origin.
struct CachedImage {
    mirror: Mirror,
    origin: Origin,
    image: Layout,
    work: tempfile::TempDir,
}

impl CachedImage {
    fn start(seed: u64, repo_tag: &str) -> CachedImage {
        CachedImage::start_with(repo_tag, |dir| small_image(dir, seed))
    }

    /// [`CachedImage::start`] with the image `build` writes into the directory it gets.
    fn start_with(repo_tag: &str, build: impl FnOnce(&Path) -> Layout) -> CachedImage {
        let work = tempfile::tempdir().unwrap();
        let image = build(&work.path().join("image"));
        let origin = Origin::start();
        skopeo::push(&image, &origin.host(), repo_tag);
        let mirror = hosted_mirror(&origin, &work.path().join("storage"));
        CachedImage {
            mirror,
            origin,
            image,
            work,
        }
    }
}

/// Requests the origin served for repository paths (its own readiness
/// probe of `/v2/` is not one).
fn origin_requests(origin: &Origin) -> Vec<String> {
    origin
        .records()
        .into_iter()
        .filter(|r| r.path != "/v2/")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// How many blob upload requests carrying data (`PATCH`, `PUT` on an
/// upload, monolithic `POST ?digest=`) the mirror's access log shows.
fn upload_requests(mirror: &Mirror) -> usize {
    mirror
        .log()
        .lines()
        .filter(|l| l.contains("path=/v2/local/") && l.contains("/blobs/uploads/"))
        .filter(|l| l.contains("method=PATCH") || l.contains("method=PUT"))
        .count()
}

/// Opens an upload session in `repo` on mirror `m`; returns its `Location`.
fn start_upload(m: &str, repo: &str) -> String {
    let started = http::request(m, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[]).unwrap();
    assert_eq!(started.status, 202, "{}", text(&started));
    started.header("location").unwrap().to_owned()
}

/// Sends `chunk` as the session's bytes from offset `start` on, with the
/// `Content-Range` that says so.
fn patch(m: &str, location: &str, start: usize, chunk: &[u8]) -> http::Response {
    let range = format!("{start}-{}", start + chunk.len() - 1);
    http::request_with_body(m, "PATCH", location, &[("Content-Range", &range)], chunk).unwrap()
}

/// Closes the session at `location` with `PUT ?digest=` and no body.
fn finish(m: &str, location: &str, digest: &str) -> http::Response {
    http::request(m, "PUT", &format!("{location}?digest={digest}"), &[]).unwrap()
}

/// Finishes the session at `location` as `digest` and reads the blob back
/// from `repo`: what a client pulling it afterwards gets.
fn finish_and_read_back(m: &str, location: &str, digest: &str, repo: &str) -> Vec<u8> {
    let done = finish(m, location, digest);
    assert_eq!(done.status, 201, "{}", text(&done));
    let blob = http::request(m, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[]).unwrap();
    assert_eq!(blob.status, 200, "{}", text(&blob));
    blob.body
}

/// A podman `registries.conf` in `work` that reaches mirror `m` over plain HTTP.
fn registries_conf_trusting(work: &Path, m: &str) -> PathBuf {
    let conf = work.join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{m}\"\ninsecure = true\n"),
    )
    .unwrap();
    conf
}

/// A Docker daemon of the test's own (its `daemon.json` in `work`) that
/// reaches mirror `m` over plain HTTP; `None` when dockerd cannot run here.
fn dockerd_trusting(test: &str, work: &Path, m: &str) -> Option<Dockerd> {
    let daemon_json = work.join("daemon.json");
    std::fs::write(
        &daemon_json,
        format!("{{\"insecure-registries\": [\"{m}\"]}}\n"),
    )
    .unwrap();
    Dockerd::start(test, &daemon_json)
}

fn text(response: &http::Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[test]
fn skopeo_copies_images_and_indexes_into_local_and_back_with_identical_digests() {
    if !tools_available("skopeo_copies_images_and_indexes_into_local_and_back") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 1501);
    let multi = multiarch_image(&work.path().join("multi"), 1502);
    let origin = Origin::start();
    let mirror = hosted_mirror(&origin, &work.path().join("storage"));
    let m = mirror.host();

    skopeo::push(&app, &m, "local/app:1");
    skopeo::push(&multi, &m, "local/multi:1");
    let got = skopeo::copy(&format!("{m}/local/app:1"), &work.path().join("out-app")).unwrap();
    assert_eq!(got.digest, app.digest);
    let got = skopeo::copy(
        &format!("{m}/local/multi:1"),
        &work.path().join("out-multi"),
    )
    .unwrap();
    assert_eq!(got.digest, multi.digest);
    // Every platform's blobs came back byte for byte (skopeo verified each digest).
    let mut want: Vec<String> = multi.all_blobs().into_iter().map(|b| b.digest).collect();
    want.sort();
    want.dedup();
    let back = skopeo::layout_blobs(&work.path().join("out-multi"));
    for digest in &want {
        assert!(
            back.contains(digest),
            "{digest} missing from the pulled index"
        );
    }
    // Data went in through upload sessions, and the origin never heard of any of it.
    assert!(upload_requests(&mirror) > 0, "no upload reached the mirror");
    assert_eq!(
        origin_requests(&origin),
        Vec::<String>::new(),
        "a hosted repository reached the origin"
    );

    let tags = http::request(&m, "GET", "/v2/local/app/tags/list", &[]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tags.body),
        r#"{"name":"local/app","tags":["1"]}"#
    );
    let catalog = http::request(&m, "GET", "/v2/_catalog", &[]).unwrap();
    let catalog = String::from_utf8_lossy(&catalog.body).into_owned();
    assert!(
        catalog.contains("\"local/app\"") && catalog.contains("\"local/multi\""),
        "{catalog}"
    );
}

#[test]
fn pushing_an_image_whose_layers_are_cached_uploads_none_of_them() {
    if !tools_available("pushing_an_image_whose_layers_are_cached_uploads_none_of_them") {
        return;
    }
    let setup = CachedImage::start(1503, "library/base:v1");
    let base = &setup.image;
    let m = setup.mirror.host();
    // Pull through the cache: every blob of the image is now stored.
    let got = skopeo::copy(
        &format!("{m}/library/base:v1"),
        &setup.work.path().join("pulled"),
    )
    .unwrap();
    assert_eq!(got.digest, base.digest);
    let origin_before = origin_requests(&setup.origin);

    skopeo::push(base, &m, "local/derived:1");
    assert_eq!(
        upload_requests(&setup.mirror),
        0,
        "cached layers were uploaded again"
    );
    let got = skopeo::copy(
        &format!("{m}/local/derived:1"),
        &setup.work.path().join("back"),
    )
    .unwrap();
    assert_eq!(got.digest, base.digest);
    assert_eq!(
        origin_requests(&setup.origin),
        origin_before,
        "the push reached the origin"
    );

    // A mount from a cached repository answers 201 without a byte sent.
    let layer = &base.images[0].layers[0].digest;
    let mount = http::request(
        &m,
        "POST",
        &format!("/v2/local/other/blobs/uploads/?mount={layer}&from=library/base"),
        &[],
    )
    .unwrap();
    assert_eq!(mount.status, 201);
    assert_eq!(
        mount.header("location"),
        Some(format!("/v2/local/other/blobs/{layer}").as_str())
    );
}

#[test]
fn a_chunked_upload_interrupted_by_a_restart_resumes() {
    if !tools_available("a_chunked_upload_interrupted_by_a_restart_resumes") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let origin = Origin::start();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_digest(&content);
    let (first, rest) = content.split_at(120_000);
    let (second, third) = rest.split_at(100_000);

    let mirror = hosted_mirror(&origin, &storage);
    let m = mirror.host();
    let mut location = start_upload(&m, "local/big");
    for (chunk, start) in [(first, 0usize), (second, first.len())] {
        let a = patch(&m, &location, start, chunk);
        assert_eq!(a.status, 202, "{}", text(&a));
        location = a.header("location").unwrap().to_owned();
    }
    drop(mirror);

    let mirror = hosted_mirror(&origin, &storage);
    let m = mirror.host();
    let progress = http::request(&m, "GET", &location, &[]).unwrap();
    assert_eq!(progress.status, 204);
    let end = first.len() + second.len();
    assert_eq!(
        progress.header("range"),
        Some(format!("0-{}", end - 1).as_str())
    );
    // A chunk that skips bytes is refused and changes nothing.
    let gap = patch(&m, &location, 250_000, &third[..10]);
    assert_eq!(gap.status, 416);
    let a = patch(&m, &location, end, third);
    assert_eq!(a.status, 202);
    let blob = finish_and_read_back(&m, &location, &digest, "local/big");
    assert!(blob == content, "the blob differs from what was uploaded");
    assert_eq!(origin_requests(&origin), Vec::<String>::new());
}

#[test]
fn corrupt_uploads_leave_nothing_visible() {
    if !tools_available("corrupt_uploads_leave_nothing_visible") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let mirror = hosted_mirror(&origin, &work.path().join("storage"));
    let m = mirror.host();
    let content = b"the layer everybody wants";
    let digest = sha256_digest(content);
    // Wrong bytes for the digest, monolithic.
    let a = http::request_with_body(
        &m,
        "POST",
        &format!("/v2/local/x/blobs/uploads/?digest={digest}"),
        &[],
        b"other bytes",
    )
    .unwrap();
    assert_eq!(a.status, 400);
    // A short body, then a finish.
    let location = start_upload(&m, "local/x");
    patch(&m, &location, 0, &content[..10]);
    assert_eq!(finish(&m, &location, &digest).status, 400);
    // A gap between chunks.
    let location = start_upload(&m, "local/x");
    patch(&m, &location, 0, &content[..10]);
    let gap = patch(&m, &location, 12, &content[12..]);
    assert_eq!(gap.status, 416);
    assert_eq!(finish(&m, &location, &digest).status, 400);
    for repo in ["local/x", "local/y", "library/alpine"] {
        let head = http::request(&m, "HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[]).unwrap();
        assert_eq!(head.status, 404, "{repo}");
    }
    let blobs = work.path().join("storage/blobs/sha256");
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        !blobs.join(&hex[..2]).join(hex).exists(),
        "the blob file exists"
    );
}

#[test]
fn a_push_to_a_cached_repository_is_refused_without_an_origin_request() {
    if !tools_available("a_push_to_a_cached_repository_is_refused_without_an_origin_request") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 1504);
    let origin = Origin::start();
    let mirror = hosted_mirror(&origin, &work.path().join("storage"));
    let m = mirror.host();
    // Raw writes: answered here, nothing sent anywhere.
    for (method, path) in [
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("PUT", "/v2/library/alpine/manifests/x"),
        ("DELETE", "/v2/library/alpine/manifests/x"),
    ] {
        let a = http::request(&m, method, path, &[]).unwrap();
        assert_eq!(a.status, 405, "{method} {path}");
        assert!(String::from_utf8_lossy(&a.body).contains("UNSUPPORTED"));
    }
    assert_eq!(origin_requests(&origin), Vec::<String>::new());
    let refused = skopeo::try_push(&app, &m, "library/alpine:x").unwrap_err();
    assert!(
        refused.to_lowercase().contains("unsupported") || refused.contains("405"),
        "{refused}"
    );
    // skopeo first asks whether each layer exists (HEAD, a read the cache
    // may answer from upstream); nothing it writes leaves the mirror.
    let writes: Vec<String> = origin_requests(&origin)
        .into_iter()
        .filter(|r| !r.starts_with("HEAD ") && !r.starts_with("GET "))
        .collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "a refused push reached the origin"
    );
}

#[test]
fn podman_pushes_to_local_and_pulls_back() {
    let test = "podman_pushes_to_local_and_pulls_back";
    if !tools_available(test) {
        return;
    }
    let Some(podman) = Podman::new(test) else {
        return;
    };
    let setup = CachedImage::start(1505, "e2e/app:v1");
    let m = setup.mirror.host();
    let conf = registries_conf_trusting(setup.work.path(), &m);
    let cached = format!("{m}/e2e/app:v1");
    let pushed = format!("{m}/local/podman:1");
    let run = |args: &[&str]| podman.run(&conf, args).unwrap();
    run(&["pull", &cached]);
    let id = run(&["image", "inspect", "--format", IMAGE_ID, &cached]);
    run(&["tag", &cached, &pushed]);
    run(&["push", &pushed]);
    run(&["rmi", "--all", "--force"]);
    run(&["pull", &pushed]);
    let back = run(&["image", "inspect", "--format", IMAGE_ID, &pushed]);
    assert_eq!(
        back.trim(),
        id.trim(),
        "the image pulled back is another one"
    );
    let tags = http::request(&m, "GET", "/v2/local/podman/tags/list", &[]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tags.body),
        r#"{"name":"local/podman","tags":["1"]}"#
    );
}

#[test]
fn docker_pushes_to_local_reusing_cached_layers_and_pulls_back() {
    let test = "docker_pushes_to_local_reusing_cached_layers_and_pulls_back";
    if !tools_available(test) {
        return;
    }
    let setup = CachedImage::start(1506, "e2e/app:v1");
    let m = setup.mirror.host();
    let Some(dockerd) = dockerd_trusting(test, setup.work.path(), &m) else {
        return;
    };
    let cached = format!("{m}/e2e/app:v1");
    let pushed = format!("{m}/local/docker:1");
    dockerd.docker(&["pull", &cached]).unwrap();
    let id = dockerd
        .docker(&["image", "inspect", "--format", IMAGE_ID, &cached])
        .unwrap();
    dockerd.docker(&["tag", &cached, &pushed]).unwrap();
    dockerd.docker(&["push", &pushed]).unwrap();
    // Every blob came from the cache: mounted or found, never uploaded.
    let log = setup.mirror.log();
    assert_eq!(
        upload_requests(&setup.mirror),
        0,
        "cached blobs were uploaded again"
    );
    assert!(
        log.contains("route=hosted_manifest"),
        "no manifest was pushed"
    );
    dockerd
        .docker(&["rmi", "--force", &cached, &pushed])
        .unwrap();
    dockerd.docker(&["pull", &pushed]).unwrap();
    let back = dockerd
        .docker(&["image", "inspect", "--format", IMAGE_ID, &pushed])
        .unwrap();
    assert_eq!(back.trim(), id.trim());
    let writes: Vec<String> = origin_requests(&setup.origin)
        .into_iter()
        .filter(|r| r.contains("/local/"))
        .collect();
    assert_eq!(writes, Vec::<String>::new(), "the push reached the origin");
}

#[test]
fn hosted_repositories_work_on_s3_storage_across_a_restart() {
    let test = "hosted_repositories_work_on_s3_storage_across_a_restart";
    if !tools_available(test) {
        return;
    }
    let Some(s3) = crate::support::s3::S3Server::start(test) else {
        return;
    };
    s3.create_bucket("oci-cache-push");
    let work = tempfile::tempdir().unwrap();
    let multi = multiarch_image(&work.path().join("multi"), 1507);
    let origin = Origin::start();
    let origin_url = origin.url();
    let config = format!(
        "local_prefixes = [\"local\"]\n\n[storage]\nkind = \"s3\"\nbucket = \"oci-cache-push\"\n\
         endpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n",
        s3.endpoint()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "e2e"),
        ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    let start = || {
        Mirror::start_oci_cache_with_config(
            &config,
            &[("a.test", &origin_url)],
            "a.test",
            "5m",
            &env,
        )
    };
    let mirror = start();
    let m = mirror.host();
    skopeo::push(&multi, &m, "local/multi:1");
    // 10 MiB in two chunks: several pieces of the session on S3.
    let content: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256_digest(&content);
    let split = 6 * 1024 * 1024;
    let location = start_upload(&m, "local/big");
    let a = patch(&m, &location, 0, &content[..split]);
    assert_eq!(a.status, 202);
    drop(mirror);

    let mirror = start();
    let m = mirror.host();
    let progress = http::request(&m, "GET", &location, &[]).unwrap();
    assert_eq!(
        progress.header("range"),
        Some(format!("0-{}", split - 1).as_str())
    );
    let a = patch(&m, &location, split, &content[split..]);
    assert_eq!(a.status, 202);
    let blob = finish_and_read_back(&m, &location, &digest, "local/big");
    assert!(blob == content, "the blob read back from S3 differs");
    let got = skopeo::copy(&format!("{m}/local/multi:1"), &work.path().join("back")).unwrap();
    assert_eq!(got.digest, multi.digest);
    assert_eq!(origin_requests(&origin), Vec::<String>::new());
}

/// Issue 22: two CI jobs push images sharing a small layer; a third dies
/// after its `PATCH` of that layer and its upload is cancelled. Before, the
/// dying upload's piece was the layer blob itself: skopeo found it (`HEAD`)
/// and skipped the upload, and the cancel deleted the layer of both pushed
/// images for good.
#[test]
fn cancelling_an_upload_keeps_the_layers_other_pushes_share() {
    if !tools_available("cancelling_an_upload_keeps_the_layers_other_pushes_share") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (first, second, shared) = two_images_sharing_a_layer(work.path(), 2201);
    let origin = Origin::start();
    let mirror = hosted_mirror(&origin, &work.path().join("storage"));
    let m = mirror.host();

    let dying = open_dying_upload(&m, &first, &shared);
    skopeo::push(&first, &m, "local/a:1");
    skopeo::push(&second, &m, "local/b:1");
    end_upload(&mirror, &dying, UploadEnd::Cancelled);

    for (image, repo) in [(&first, "local/a"), (&second, "local/b")] {
        let out = work.path().join(repo.replace('/', "-"));
        let got = skopeo::copy(&format!("{m}/{repo}:1"), &out).unwrap();
        assert_eq!(got.digest, image.digest);
        assert_blobs_served(&m, repo, image);
    }
}

/// Two images (distinct configs) sharing their first layer, built in
/// `work`, and that layer: what two CI jobs push in the issue 22 tests.
fn two_images_sharing_a_layer(work: &Path, seed: u64) -> (Layout, Layout, Blob) {
    let spec = ImageSpec::new(seed, 2, 3000);
    let first = build_image(&work.join("first"), "v1", &spec);
    let second = build_image(
        &work.join("second"),
        "v1",
        &spec.clone().with_config_seed(seed + 1),
    );
    assert_ne!(first.digest, second.digest);
    let shared = first.images[0].layers[0].clone();
    assert_eq!(second.images[0].layers[0], shared);
    (first, second, shared)
}

/// Opens an upload in `local/dying` on mirror `m` and sends every byte of
/// `layer` (of `image`) without finishing: a third job that dies mid-push.
/// Returns the session's `Location`.
fn open_dying_upload(m: &str, image: &Layout, layer: &Blob) -> String {
    let dying = start_upload(m, "local/dying");
    let bytes = std::fs::read(image.blob_path(&layer.digest)).unwrap();
    let patched = patch(m, &dying, 0, &bytes);
    assert_eq!(patched.status, 202, "{}", text(&patched));
    // The unfinished upload's bytes are no blob: not even a HEAD finds them.
    let head = http::request(
        m,
        "HEAD",
        &format!("/v2/local/a/blobs/{}", layer.digest),
        &[],
    )
    .unwrap();
    assert_eq!(head.status, 404);
    dying
}

/// How an unfinished upload session ends.
#[derive(Debug, Clone, Copy)]
enum UploadEnd<'a> {
    /// Its client cancels it (`DELETE`).
    Cancelled,
    /// Nobody touches it for longer than the mirror's `upload_max_age` and
    /// the sweep removes it (the mirror, storing in `storage`, must run
    /// with a short one).
    Expired { storage: &'a Path },
}

/// Ends the upload session at `location` on `mirror` as `how` says, and
/// waits until the mirror no longer knows it.
fn end_upload(mirror: &Mirror, location: &str, how: UploadEnd<'_>) {
    let m = mirror.host();
    match how {
        UploadEnd::Cancelled => {
            let cancelled = http::request(&m, "DELETE", location, &[]).unwrap();
            assert_eq!(cancelled.status, 204, "{}", text(&cancelled));
        }
        UploadEnd::Expired { storage } => {
            age_upload_record(storage, location);
            // A 1-minute upload_max_age sweeps every 15 s.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
            while http::request(&m, "GET", location, &[]).unwrap().status != 404
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    let status = http::request(&m, "GET", location, &[]).unwrap().status;
    assert_eq!(status, 404, "the upload at {location} is still open");
}

/// Rewrites the record of the upload at `location` in `storage` to say it
/// was last touched at the epoch: abandoned long ago.
fn age_upload_record(storage: &Path, location: &str) {
    let id = location.rsplit('/').next().unwrap();
    let record = storage.join("uploads").join(id);
    let mut session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    session["updated"] = 0.into();
    std::fs::write(&record, serde_json::to_vec(&session).unwrap()).unwrap();
}

/// Asserts that `repo` on mirror `m` serves every blob of `image`, byte-exact.
fn assert_blobs_served(m: &str, repo: &str, image: &Layout) {
    for blob in image.all_blobs() {
        let path = format!("/v2/{repo}/blobs/{}", blob.digest);
        let got = http::request(m, "GET", &path, &[]).unwrap();
        assert_eq!(got.status, 200, "{repo}: {} is gone", blob.digest);
        assert_eq!(sha256_digest(&got.body), blob.digest);
    }
}

/// Issue 22: an image pulled through the cache and pushed, unchanged, into
/// `local/…` shares its manifest and every blob with the cached copy.
/// Before, purging the cached tag removed that manifest and then every blob
/// no manifest named any more: the pushed image was gone. Neither purge nor
/// gc under a cap it is over may touch it.
#[test]
fn purge_and_gc_of_a_cached_image_keep_the_pushed_copy() {
    if !tools_available("purge_and_gc_of_a_cached_image_keep_the_pushed_copy") {
        return;
    }
    // 2 MiB of layers: over the smallest cap gc accepts (1 MiB).
    let setup = CachedImage::start_with("library/base:v1", |dir| {
        build_image(dir, "v1", &ImageSpec::new(2203, 2, 1 << 20))
    });
    let m = setup.mirror.host();
    let storage = setup.work.path().join("storage");
    let storage = storage.display().to_string();
    let got = skopeo::copy(
        &format!("{m}/library/base:v1"),
        &setup.work.path().join("pulled"),
    )
    .unwrap();
    assert_eq!(got.digest, setup.image.digest);
    skopeo::push(&setup.image, &m, "local/kept:1");

    let upstream = format!("a.test={}", setup.origin.url());
    let purged = oci_cache(&[
        "purge",
        "--storage-dir",
        &storage,
        "--upstream",
        &upstream,
        "--default-upstream",
        "a.test",
        "a.test/library/base:v1",
    ]);
    assert!(
        purged.contains("purged 1 tag(s), 0 manifest(s), 0 blob(s)"),
        "{purged}"
    );
    let collected = oci_cache(&["gc", "--storage-dir", &storage, "--max-size", "1MiB"]);
    assert!(collected.contains("stored 2.00 MiB"), "{collected}");
    assert!(collected.contains("evicted 0 blob(s)"), "{collected}");

    let back = skopeo::copy(
        &format!("{m}/local/kept:1"),
        &setup.work.path().join("back"),
    )
    .unwrap();
    assert_eq!(back.digest, setup.image.digest);
    assert_blobs_served(&m, "local/kept", &setup.image);
}

/// Issue 22: what a crash leaves (a stale staging file) and an abandoned
/// upload (pieces nobody finishes) are swept while the mirror serves;
/// before, only a start at least 15 minutes later removed staging files,
/// and abandoned sessions went only when another session started.
#[test]
fn stale_staging_files_and_abandoned_uploads_are_swept_while_serving() {
    let mirror = Mirror::start_with_args(
        &[
            "--config",
            "{dir}/hosted.toml",
            "--storage-dir",
            "{dir}/storage",
            "--local-prefix",
            "local",
        ],
        &[("hosted.toml", "upload_max_age = \"1m\"\n")],
    );
    let m = mirror.host();
    let storage = mirror.dir().join("storage");
    let leftover = storage.join("_staging/left-by-a-crash");
    std::fs::write(&leftover, b"half a blob").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let abandoned = start_upload(&m, "local/app");
    assert_eq!(patch(&m, &abandoned, 0, b"some bytes").status, 202);
    assert!(storage
        .join("upload-pieces")
        .read_dir()
        .unwrap()
        .next()
        .is_some());
    age_upload_record(&storage, &abandoned);

    // A 1-minute upload_max_age sweeps every 15 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let swept = || {
        let pieces_left = storage
            .join("upload-pieces")
            .read_dir()
            .map_or(0, |d| d.count());
        !leftover.exists() && pieces_left == 0
    };
    while !swept() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!leftover.exists(), "the stale staging file is still there");
    let status = http::request(&m, "GET", &abandoned, &[]).unwrap().status;
    assert_eq!(status, 404, "the abandoned upload is still open");
    assert!(swept(), "the abandoned upload's pieces are still stored");
}

/// The images of [`two_images_sharing_a_layer`] on a new origin as
/// `e2e/a:v1` and `e2e/b:v1`, behind a hosted mirror (started with `extra`
/// arguments and files), with a dying upload of their shared layer open in
/// `local/dying` before any client asked for it. Fields drop in order, so
/// the mirror stops before its origin.
struct SharedLayerPush {
    mirror: Mirror,
    _origin: Origin,
    first: Layout,
    second: Layout,
    dying: String,
    work: tempfile::TempDir,
}

impl SharedLayerPush {
    fn start(seed: u64, extra: &[&str], dir_files: &[(&str, &str)]) -> SharedLayerPush {
        let work = tempfile::tempdir().unwrap();
        let (first, second, shared) = two_images_sharing_a_layer(work.path(), seed);
        let origin = Origin::start();
        skopeo::push(&first, &origin.host(), "e2e/a:v1");
        skopeo::push(&second, &origin.host(), "e2e/b:v1");
        let storage = work.path().join("storage");
        let mirror = hosted_mirror_with(&origin, &storage, extra, dir_files);
        let dying = open_dying_upload(&mirror.host(), &first, &shared);
        SharedLayerPush {
            mirror,
            _origin: origin,
            first,
            second,
            dying,
            work,
        }
    }

    /// With `client` (podman or docker: they share these commands) pulls
    /// each image through the mirror, tags it into `local/…` and pushes it;
    /// ends the dying upload as `how` says; then removes both images from
    /// the client, pulls them back and checks each has its old id and that
    /// the mirror serves every blob of it byte-exact.
    fn push_end_and_pull_back(&self, client: impl Fn(&[&str]) -> String, how: UploadEnd<'_>) {
        let m = self.mirror.host();
        let images = [
            (&self.first, "e2e/a:v1", "local/a"),
            (&self.second, "e2e/b:v1", "local/b"),
        ];
        let mut ids = Vec::new();
        for (_, cached, repo) in images {
            let (cached, pushed) = (format!("{m}/{cached}"), format!("{m}/{repo}:1"));
            client(&["pull", &cached]);
            ids.push(client(&["image", "inspect", "--format", IMAGE_ID, &cached]));
            client(&["tag", &cached, &pushed]);
            client(&["push", &pushed]);
        }
        end_upload(&self.mirror, &self.dying, how);

        for ((image, cached, repo), id) in images.into_iter().zip(&ids) {
            let (cached, pushed) = (format!("{m}/{cached}"), format!("{m}/{repo}:1"));
            client(&["rmi", "--force", &cached, &pushed]);
            client(&["pull", &pushed]);
            let back = client(&["image", "inspect", "--format", IMAGE_ID, &pushed]);
            assert_eq!(
                back.trim(),
                id.trim(),
                "{pushed} pulled back is another image"
            );
            assert_blobs_served(&m, repo, image);
        }
    }
}

/// Issue 22 with podman as the client: it pushes two images sharing a layer
/// while a third upload of that layer is open; cancelling that upload leaves
/// both images whole, pulled back with the same ids and every blob intact.
#[test]
fn podman_pushes_sharing_a_layer_survive_a_cancelled_upload_of_it() {
    let test = "podman_pushes_sharing_a_layer_survive_a_cancelled_upload_of_it";
    if !tools_available(test) {
        return;
    }
    let Some(podman) = Podman::new(test) else {
        return;
    };
    let setup = SharedLayerPush::start(2205, &[], &[]);
    let m = setup.mirror.host();
    let conf = registries_conf_trusting(setup.work.path(), &m);
    let podman = |args: &[&str]| podman.run(&conf, args).unwrap();
    setup.push_end_and_pull_back(podman, UploadEnd::Cancelled);
}

/// Issue 22 with the Docker daemon as the client, the third upload of the
/// shared layer left to expire (a 1-minute `upload_max_age`) instead of
/// cancelled: its sweep leaves both pushed images whole.
#[test]
fn docker_pushes_sharing_a_layer_survive_an_expired_upload_of_it() {
    let test = "docker_pushes_sharing_a_layer_survive_an_expired_upload_of_it";
    if !tools_available(test) {
        return;
    }
    let setup = SharedLayerPush::start(
        2207,
        &["--config", "{dir}/hosted.toml"],
        &[("hosted.toml", "upload_max_age = \"1m\"\n")],
    );
    let m = setup.mirror.host();
    let Some(dockerd) = dockerd_trusting(test, setup.work.path(), &m) else {
        return;
    };
    let docker = |args: &[&str]| dockerd.docker(args).unwrap();
    let storage = setup.work.path().join("storage");
    setup.push_end_and_pull_back(docker, UploadEnd::Expired { storage: &storage });
}
