//! Issue 16: the configuration `oci-cache client-config KIND` writes, used by
//! the real clients. Each test generates the files with the binary, hands
//! them to the client unchanged, and checks what arrived and who fetched it:
//! the origin's access log names the user agent of every request, so a pull
//! that went around the mirror cannot pass for one that went through it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::fixtures::small_image;
use super::resilience::seed_storage;
use crate::support::containerd::{Containerd, Fetched};
use crate::support::dockerd::Dockerd;
use crate::support::image::Layout;
use crate::support::mirror::{oci_cache, oci_cache_bin, Mirror};
use crate::support::podman::Podman;
use crate::support::registry::Origin;
use crate::support::{free_port, skopeo, tools_available, ServerProcess};

/// A mirror config file serving `upstreams` (`(name, origin)`), the first
/// one the default.
pub(super) fn write_mirror_config(dir: &Path, upstreams: &[(&str, &Origin)]) -> PathBuf {
    let mut text = format!("default_upstream = \"{}\"\n", upstreams[0].0);
    for (name, origin) in upstreams {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\n",
            origin.url()
        ));
    }
    let path = dir.join("mirror.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// oci-cache started from [`write_mirror_config`]'s file, and that file.
pub(super) fn mirror_over(dir: &Path, upstreams: &[(&str, &Origin)]) -> (Mirror, PathBuf) {
    let config = write_mirror_config(dir, upstreams);
    let mirror = Mirror::start_oci_cache_args(&["--config".into(), config.display().to_string()]);
    (mirror, config)
}

/// [`client_config`] for `mirror`, over plain HTTP, with no extra arguments.
pub(super) fn generate(kind: &str, mirror: &Mirror, config: &Path, output: &Path) {
    let url = format!("http://{}", mirror.host());
    client_config(kind, &url, config, output, &[]);
}

/// `oci-cache client-config KIND --mirror URL --config FILE --output DIR ARGS`.
pub(super) fn client_config(
    kind: &str,
    mirror_url: &str,
    config: &Path,
    output: &Path,
    args: &[&str],
) {
    let out = Command::new(oci_cache_bin())
        .args(["client-config", kind, "--mirror", mirror_url, "--config"])
        .arg(config)
        .arg("--output")
        .arg(output)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client-config {kind} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user agents in an origin's access log (the last quoted field).
fn user_agents(origin: &Origin) -> Vec<String> {
    origin
        .access_log()
        .lines()
        .filter_map(|l| l.trim_end().strip_suffix('"'))
        .filter_map(|l| l.rsplit_once('"').map(|(_, ua)| ua.to_owned()))
        .collect()
}

/// The mirror (`oci-cache/VERSION`), or the test filling the origin
/// (skopeo, the harness's own HTTP client).
fn is_mirror_or_harness(ua: &str) -> bool {
    ["oci-cache/", "skopeo/", "oci-cache-e2e"]
        .iter()
        .any(|p| ua.starts_with(p))
}

/// Every request the origin saw came from the mirror, and there was one.
pub(super) fn assert_only_the_mirror_reached(origin: &Origin, client: &str) {
    let agents = user_agents(origin);
    assert!(
        agents.iter().any(|ua| ua.starts_with("oci-cache/")),
        "the mirror never reached the origin: {agents:?}"
    );
    let direct: Vec<&String> = agents
        .iter()
        .filter(|ua| !is_mirror_or_harness(ua))
        .collect();
    assert!(
        direct.is_empty(),
        "{client} went around the mirror: {direct:?}"
    );
}

/// ctr resolved `image` and its content store holds every one of its blobs.
pub(super) fn assert_fetched(got: &Fetched, image: &Layout) {
    assert_eq!(got.digest, image.digest);
    for blob in image.all_blobs() {
        assert!(
            got.content.contains(&blob.digest),
            "{} missing",
            blob.digest
        );
    }
}

#[test]
fn containerd_pulls_both_upstreams_through_the_generated_certs_d() {
    let test = "containerd_pulls_both_upstreams_through_the_generated_certs_d";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let alpine = small_image(&work.path().join("alpine"), 160);
    let app = small_image(&work.path().join("app"), 161);
    let hub = Origin::with_images(&[(&alpine, "library/alpine:3.20")]);
    let b = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub), ("b.test", &b)]);
    let certs_d = work.path().join("certs.d");
    generate("containerd", &mirror, &config, &certs_d);
    assert!(certs_d.join("_default/hosts.toml").is_file());

    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, "docker.io/library/alpine:3.20")
        .unwrap();
    assert_fetched(&got, &alpine);
    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, "b.test/e2e/app:v1")
        .unwrap();
    assert_eq!(got.digest, app.digest);
    assert_only_the_mirror_reached(&hub, "containerd");
    assert_only_the_mirror_reached(&b, "containerd");
}

/// A mirror with `[auth] htpasswd` (user `node`) in front of an origin that
/// needs the mirror's own credentials: ctr pulls through the generated
/// certs.d only with the Authorization header `--username` puts there.
#[test]
fn containerd_sends_the_generated_basic_header_to_an_htpasswd_mirror() {
    let test = "containerd_sends_the_generated_basic_header_to_an_htpasswd_mirror";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let app = small_image(&dir.join("app"), 162);
    // The origin refuses anonymous pulls too, so containerd falling back
    // to it (`server`) cannot pass for a pull through the mirror.
    let origin_root = dir.join("origin-data");
    seed_storage(&origin_root, &app, "e2e/secret:v1");
    let htpasswd = |file: &Path, user: &str, password: &str| {
        let out = Command::new("htpasswd")
            .args(["-B", "-b", "-c"])
            .arg(file)
            .args([user, password])
            .output()
            .expect("htpasswd (apache2-utils) is needed; run scripts/install-test-deps");
        assert!(out.status.success(), "{out:?}");
    };
    htpasswd(&dir.join("origin-htpasswd"), "mirror", "origin-pw-3kQ");
    let origin = Origin::start_on(
        &origin_root,
        &format!(
            "auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
            dir.join("origin-htpasswd").display()
        ),
    );
    std::fs::write(dir.join("origin-password"), "origin-pw-3kQ\n").unwrap();
    htpasswd(&dir.join("clients"), "node", "node-pw-8Zt");
    std::fs::write(dir.join("node-password"), "node-pw-8Zt\n").unwrap();
    let config = dir.join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "default_upstream = \"private.test\"\n\n[auth]\nhtpasswd = \"{clients}\"\n\n\
             [[upstream]]\nname = \"private.test\"\nurl = \"{url}\"\n\
             credentials = {{ username = \"mirror\", password_file = \"{pw}\" }}\n",
            clients = dir.join("clients").display(),
            url = origin.url(),
            pw = dir.join("origin-password").display(),
        ),
    )
    .unwrap();
    let mirror = Mirror::start_oci_cache_args(&["--config".into(), config.display().to_string()]);
    let mirror_url = format!("http://{}", mirror.host());

    let anonymous = dir.join("certs.d-anonymous");
    generate("containerd", &mirror, &config, &anonymous);
    let err = ctrd
        .fetch_with_hosts_dir(&anonymous, "private.test/e2e/secret:v1")
        .unwrap_err();
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );

    let certs_d = dir.join("certs.d");
    client_config(
        "containerd",
        &mirror_url,
        &config,
        &certs_d,
        &[
            "--username",
            "node",
            "--password-file",
            &dir.join("node-password").display().to_string(),
        ],
    );
    let hosts = certs_d.join("private.test/hosts.toml");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&hosts).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "credentials in a world-readable file");
    let direct_before = user_agents(&origin)
        .iter()
        .filter(|ua| !is_mirror_or_harness(ua))
        .count();
    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, "private.test/e2e/secret:v1")
        .unwrap();
    assert_fetched(&got, &app);
    let agents = user_agents(&origin);
    let direct_after = agents.iter().filter(|ua| !is_mirror_or_harness(ua)).count();
    assert_eq!(
        direct_after, direct_before,
        "containerd went around the mirror: {agents:?}"
    );
    assert!(
        agents.iter().any(|ua| ua.starts_with("oci-cache/")),
        "{agents:?}"
    );
}

#[test]
fn containerd_falls_back_to_the_origin_quickly_when_the_mirror_is_down() {
    let test = "containerd_falls_back_to_the_origin_quickly_when_the_mirror_is_down";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 162);
    let b = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let certs_d = work.path().join("certs.d");
    {
        let (mirror, config) = mirror_over(work.path(), &[("b.test", &b)]);
        generate("containerd", &mirror, &config, &certs_d);
    } // The mirror is stopped here: its port refuses connections.

    let start = Instant::now();
    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, "b.test/e2e/app:v1")
        .unwrap();
    let took = start.elapsed();
    eprintln!(
        "containerd fallback with the mirror down: {} blobs in {took:.2?}",
        app.all_blobs().len() + 1
    );
    assert_eq!(got.digest, app.digest);
    // containerd itself fetched everything from the origin; the stopped
    // mirror never did.
    let agents = user_agents(&b);
    assert!(
        !agents.iter().any(|ua| ua.starts_with("oci-cache/")),
        "{agents:?}"
    );
    assert!(
        agents.iter().any(|ua| ua.starts_with("containerd/")),
        "{agents:?}"
    );
    // Five requests (manifest, config, three layers) each try the mirror
    // first: at containerd's 30 s dial timeout one stuck attempt alone would
    // blow this bound.
    assert!(took.as_secs_f64() < 5.0, "fallback took {took:?}");
}

#[test]
fn docker_daemon_pulls_alpine_through_the_generated_daemon_json() {
    let test = "docker_daemon_pulls_alpine_through_the_generated_daemon_json";
    if !tools_available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let alpine = small_image(&work.path().join("alpine"), 163);
    let hub = Origin::with_images(&[(&alpine, "library/alpine:3.20")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub)]);
    let out = work.path().join("docker");
    generate("docker", &mirror, &config, &out);
    let Some(dockerd) = Dockerd::start(test, &out.join("daemon.json")) else {
        return;
    };
    let start = Instant::now();
    dockerd.docker(&["pull", "alpine:3.20"]).unwrap();
    eprintln!(
        "docker pull alpine:3.20 through the mirror: {:.2?}",
        start.elapsed()
    );
    let id = dockerd
        .docker(&["image", "inspect", "--format", "{{.Id}}", "alpine:3.20"])
        .unwrap();
    assert_eq!(id.trim(), alpine.images[0].config.digest);
    let digests = dockerd
        .docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            "alpine:3.20",
        ])
        .unwrap();
    assert!(digests.contains(&alpine.digest), "{digests}");
    assert_only_the_mirror_reached(&hub, "dockerd");
}

#[test]
fn podman_pulls_a_non_default_upstream_by_path_prefix() {
    let test = "podman_pulls_a_non_default_upstream_by_path_prefix";
    if !tools_available(test) {
        return;
    }
    let Some(podman) = Podman::new(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let hub_image = small_image(&work.path().join("hub"), 164);
    let app = small_image(&work.path().join("app"), 165);
    let hub = Origin::with_images(&[(&hub_image, "e2e/app:v1")]);
    let b = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub), ("b.test", &b)]);
    let out = work.path().join("podman");
    generate("podman", &mirror, &config, &out);
    let conf = out.join("registries.conf");
    let hub_before = hub.count("GET", "/e2e/app/");

    let start = Instant::now();
    podman.run(&conf, &["pull", "b.test/e2e/app:v1"]).unwrap();
    eprintln!(
        "podman pull b.test/e2e/app:v1 through the mirror: {:.2?}",
        start.elapsed()
    );
    let digest = podman
        .run(
            &conf,
            &[
                "image",
                "inspect",
                "--format",
                "{{.Digest}}",
                "b.test/e2e/app:v1",
            ],
        )
        .unwrap();
    // Same repository and tag on docker.io, other bytes: the prefix routed it.
    assert_eq!(digest.trim(), app.digest);
    assert_ne!(app.digest, hub_image.digest);
    assert_only_the_mirror_reached(&b, "podman");
    // By path prefix (registries.conf has no `ns`).
    assert!(
        mirror
            .log()
            .contains("path=/v2/b.test/e2e/app/manifests/v1 "),
        "{}",
        mirror.log()
    );
    assert_eq!(
        hub.count("GET", "/e2e/app/"),
        hub_before,
        "b.test's pull reached docker.io's origin"
    );
}

/// The registry config of the Earthly guide in the seeds, verbatim but for
/// the remote (the test origin), the storage root and the address.
fn earthly_seed_config(remote: &str, root: &Path, addr: &str) -> String {
    format!(
        "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: {remote}
  username: [username]
  password: [password]
",
        root = root.display()
    )
}

/// `oci-cache serve` with only `args` and `env` (no `--listen`): the
/// registry:2 settings must supply the address, `port`.
fn serve_dropin(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let log = dir.join("oci-cache.log");
    let mut cmd = Command::new(oci_cache_bin());
    cmd.current_dir(dir)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    ServerProcess::spawn("oci-cache (registry:2 drop-in)", cmd, port, log, "/v2/")
}

#[test]
fn the_earthly_seed_registry_config_is_served_by_registry_config() {
    if !tools_available("the_earthly_seed_registry_config_is_served_by_registry_config") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let alpine = small_image(&work.path().join("alpine"), 166);
    let origin = Origin::with_images(&[(&alpine, "library/alpine:3.20")]);
    let port = free_port();
    let root = work.path().join("registry-data");
    let config = work.path().join("config.yml");
    std::fs::write(
        &config,
        earthly_seed_config(&origin.url(), &root, &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let _mirror = serve_dropin(
        work.path(),
        port,
        &["--registry-config", &config.display().to_string()],
        &[],
    );
    let got = skopeo::copy(
        &format!("127.0.0.1:{port}/library/alpine:3.20"),
        &work.path().join("copy"),
    )
    .unwrap();
    assert_eq!(got.digest, alpine.digest);
    assert_only_the_mirror_reached(&origin, "skopeo");
    // The file's storage root holds what was cached.
    assert!(std::fs::read_dir(&root).unwrap().next().is_some());
    let log = std::fs::read_to_string(work.path().join("oci-cache.log")).unwrap();
    assert!(
        log.contains("registry config settings not used by oci-cache: log")
            && log.contains("storage.cache")
            && log.contains("http.headers")
            && log.contains("health"),
        "{log}"
    );
}

#[test]
fn the_registry_environment_of_the_seeds_docker_run_line_is_honoured() {
    if !tools_available("the_registry_environment_of_the_seeds_docker_run_line_is_honoured") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 167);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let port = free_port();
    let (remote, addr) = (origin.url(), format!("127.0.0.1:{port}"));
    let root = work.path().join("var-lib-registry");
    let root_text = root.display().to_string();
    let _mirror = serve_dropin(
        work.path(),
        port,
        &[],
        &[
            ("REGISTRY_PROXY_REMOTEURL", &remote),
            ("REGISTRY_HTTP_ADDR", &addr),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root_text),
        ],
    );
    // No upstream named: the remote is the default upstream.
    let got = skopeo::copy(&format!("{addr}/e2e/app:v1"), &work.path().join("copy")).unwrap();
    assert_eq!(got.digest, app.digest);
    assert_only_the_mirror_reached(&origin, "skopeo");
    assert!(std::fs::read_dir(&root).unwrap().next().is_some());
}

/// A Debian bookworm root filesystem as a tar (`debootstrap --variant=minbase`),
/// made once per target dir: no base image can be pulled here, but Debian's
/// packages can. `None` (said loudly) without debootstrap.
fn debian_base_tar(test: &str) -> Option<PathBuf> {
    let tar = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-bookworm-minbase.tar");
    if tar.is_file() {
        return Some(tar);
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        let msg =
            format!("{test}: SKIPPED — debootstrap not installed (run scripts/install-test-deps)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: refusing to skip)");
        }
        eprintln!("\n!!!!!!!! {msg}\n");
        return None;
    }
    let rootfs = tempfile::Builder::new()
        .prefix("e2e-rootfs-")
        .tempdir()
        .unwrap();
    let start = Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(rootfs.path())
        .arg("http://deb.debian.org/debian")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Written aside and renamed: a half-written tar is never reused.
    let partial = tar.with_extension("tar.partial");
    let status = Command::new("tar")
        .arg("-C")
        .arg(rootfs.path())
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(&partial, &tar).unwrap();
    eprintln!(
        "e2e fixture: debootstrapped the base in {:.2?}",
        start.elapsed()
    );
    Some(tar)
}

#[test]
fn the_container_image_serves_the_seeds_docker_run_line() {
    let test = "the_container_image_serves_the_seeds_docker_run_line";
    if !tools_available(test) {
        return;
    }
    let Some(base_tar) = debian_base_tar(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let daemon_json = work.path().join("daemon.json");
    std::fs::write(&daemon_json, "{}\n").unwrap();
    let Some(dockerd) = Dockerd::start(test, &daemon_json) else {
        return;
    };
    dockerd
        .docker_with(
            &["import", "-", "local/debian:bookworm"],
            &[],
            Some(&base_tar),
        )
        .unwrap();

    // Debian's docker client (20.10) builds with BuildKit without a plugin.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/container-image");
    let start = Instant::now();
    let out = Command::new(&script)
        .args([
            "--base",
            "local/debian:bookworm",
            "--tag",
            "oci-cache:e2e",
            "--binary",
        ])
        .arg(oci_cache_bin())
        .env("DOCKER_HOST", dockerd.host())
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/container-image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "oci-cache:e2e");
    eprintln!("scripts/container-image: {:.2?}", start.elapsed());

    let app = small_image(&work.path().join("app"), 168);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let port = free_port();
    let (remote, addr) = (origin.url(), format!("127.0.0.1:{port}"));
    // The seeds' invocation, with our image instead of registry:2.
    let id = dockerd
        .docker(&[
            "run",
            "-d",
            "--network",
            "host",
            "-e",
            &format!("REGISTRY_PROXY_REMOTEURL={remote}"),
            "-e",
            &format!("REGISTRY_HTTP_ADDR={addr}"),
            "oci-cache:e2e",
        ])
        .unwrap();
    let id = id.trim();
    let ready = Instant::now();
    while crate::support::http::request(&addr, "GET", "/v2/", &[]).is_err() {
        assert!(
            ready.elapsed().as_secs() < 30,
            "the container did not serve on {addr}:\n{}",
            dockerd.docker(&["logs", id]).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let got = skopeo::copy(&format!("{addr}/e2e/app:v1"), &work.path().join("copy"));
    let user = dockerd.docker(&["inspect", "--format", "{{.Config.User}}", id]);
    let health = dockerd.docker(&["exec", id, "oci-cache", "healthcheck"]);
    let stored = dockerd.docker(&["exec", id, "ls", "/data/oci-cache-data"]);
    let _ = dockerd.docker(&["rm", "-f", id]);
    assert_eq!(got.unwrap().digest, app.digest);
    assert_only_the_mirror_reached(&origin, "skopeo");
    assert_eq!(user.unwrap().trim(), "65532:65532");
    health.unwrap();
    assert!(
        !stored.unwrap().trim().is_empty(),
        "nothing stored under /data"
    );
}

/// Runs `tool ARGS`; `None` (said loudly) when the tool is not installed.
fn run_tool(test: &str, tool: &str, args: &[&str]) -> Option<std::process::Output> {
    // Python tools live in the test virtual environment scripts/install-test-deps makes.
    let venv = std::env::var_os("OCI_CACHE_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test"));
    let in_venv = venv.join("bin").join(tool);
    let program = if in_venv.exists() {
        in_venv
    } else {
        std::path::PathBuf::from(tool)
    };
    match Command::new(program).args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            let msg =
                format!("{test}: SKIPPED — {tool} cannot run ({e}); run scripts/install-test-deps");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: refusing to skip)");
            }
            eprintln!("\n!!!!!!!! {msg}\n");
            None
        }
    }
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let test = "the_systemd_unit_verifies_and_is_hardened";
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(repo.join("deploy/systemd/oci-cache.service")).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("oci-cache.service");
    let bin = oci_cache_bin().display().to_string();
    std::fs::write(&path, unit.replace("/usr/local/bin/oci-cache", &bin)).unwrap();
    let path = path.display().to_string();
    let Some(verify) = run_tool(test, "systemd-analyze", &["verify", &path]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
    let security = run_tool(
        test,
        "systemd-analyze",
        &["security", "--offline=true", &path],
    )
    .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for oci-cache.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {exposure} (0 best, 10 worst)");
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}

/// Every manifest under deploy/kubernetes.
const KUBERNETES_MANIFESTS: [&str; 3] = [
    "oci-cache.yaml",
    "oci-cache-daemonset.yaml",
    "oci-cache-fleet.yaml",
];

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let test = "the_kubernetes_manifests_validate_against_the_schemas";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let files: Vec<String> = KUBERNETES_MANIFESTS
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let Some(out) = run_tool(test, "kubernetes-validate", &args) else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for resource in [
        "namespace/oci-cache",
        "configmap/oci-cache",
        "persistentvolumeclaim/oci-cache-data",
        "deployment/oci-cache",
        "service/oci-cache",
        "daemonset/oci-cache",
        "secret/oci-cache-peer",
        "configmap/oci-cache-fleet",
        "deployment/oci-cache-fleet",
        "service/oci-cache-fleet",
        "service/oci-cache-peers",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{text}"
        );
    }
    // The ConfigMap's oci-cache.toml is a config the binary accepts.
    let manifest = std::fs::read_to_string(dir.join("oci-cache.yaml")).unwrap();
    let toml: String = manifest
        .split("oci-cache.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("oci-cache.toml");
    std::fs::write(&config, toml).unwrap();
    let stdout = oci_cache(&["check-config", &config.display().to_string()]);
    assert!(
        stdout.contains("storage: filesystem at /data/oci-cache-data"),
        "{stdout}"
    );
}

/// The manifests under deploy/kubernetes, every YAML document of each.
fn kubernetes_manifests() -> Vec<(String, serde_norway::Value)> {
    use serde::Deserialize as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut docs = Vec::new();
    for file in KUBERNETES_MANIFESTS {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            docs.push((
                file.to_owned(),
                serde_norway::Value::deserialize(doc).unwrap(),
            ));
        }
    }
    docs
}

fn bytes_of(text: &str) -> u64 {
    // Kubernetes quantities (Gi, Mi) and oci-cache sizes (GiB, MiB) alike.
    let text = text.trim_end_matches('B');
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap());
    let unit = match unit {
        "Ki" => 1u64 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => panic!("unit {other:?} in {text}"),
    };
    number.parse::<u64>().unwrap() * unit
}

/// Neither the Deployment nor the DaemonSet can fill the disk under it: the
/// Deployment's cap leaves room on its volume for what the cap does not
/// count, the DaemonSet (a hostPath on the node's own disk, which no limit
/// bounds) sets a cap, and every emptyDir has a size limit.
#[test]
fn the_kubernetes_manifests_cap_the_cache_below_their_volumes() {
    let docs = kubernetes_manifests();
    let find = |file: &str, kind: &str| -> &serde_norway::Value {
        &docs
            .iter()
            .find(|(f, d)| f == file && d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in {file}"))
            .1
    };
    // Deployment: [cache] max_size at most 85 % of the claim.
    let config = find("oci-cache.yaml", "ConfigMap")["data"]["oci-cache.toml"]
        .as_str()
        .unwrap();
    let config: toml::Table = toml::from_str(config).unwrap();
    let cap = bytes_of(config["cache"]["max_size"].as_str().unwrap());
    let claim = find("oci-cache.yaml", "PersistentVolumeClaim")["spec"]["resources"]["requests"]
        ["storage"]
        .as_str()
        .unwrap();
    let claim = bytes_of(claim);
    assert!(
        cap * 100 <= claim * 85,
        "max_size {cap} on a {claim} volume"
    );
    // DaemonSet: hostPath data, so --max-size must be there.
    let daemonset = find("oci-cache-daemonset.yaml", "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["hostPath"]["path"].as_str() == Some("/var/lib/oci-cache")));
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--max-size")
        .expect("--max-size");
    assert!(bytes_of(args[at + 1]) <= 20 << 30, "{args:?}");
    // Every emptyDir of every workload has a size limit.
    for (file, doc) in &docs {
        let Some(volumes) = doc["spec"]["template"]["spec"]["volumes"].as_sequence() else {
            continue;
        };
        for volume in volumes {
            if let Some(dir) = volume.get("emptyDir") {
                assert!(
                    dir.get("sizeLimit").is_some(),
                    "{file}: emptyDir {:?} without sizeLimit",
                    volume["name"]
                );
            }
        }
    }
    // The cap is one serve accepts.
    let manifest_config = find("oci-cache.yaml", "ConfigMap")["data"]["oci-cache.toml"]
        .as_str()
        .unwrap()
        .replace("/data/oci-cache-data", "/tmp/oci-cache-manifest-check");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("oci-cache.toml");
    std::fs::write(&file, manifest_config).unwrap();
    let stdout = oci_cache(&["check-config", &file.display().to_string()]);
    assert!(
        stdout.contains("40GiB") || stdout.contains("42949672960"),
        "{stdout}"
    );
}

/// `kubectl apply --dry-run=client` needs an API server even so (it asks
/// the server's discovery API to map each kind to a resource: without one it
/// fails with "connection refused" to localhost:8080, with --validate=false
/// too), so the suite runs kubectl's offline path: `label --local -o yaml`
/// decodes every object of every manifest as `apply` would read it. The
/// schema check is `kubernetes-validate --strict` above.
#[test]
fn kubectl_decodes_every_manifest_offline() {
    let test = "kubectl_decodes_every_manifest_offline";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let docs = kubernetes_manifests();
    for file in KUBERNETES_MANIFESTS {
        let path = dir.join(file).display().to_string();
        let args = [
            "label",
            "--local",
            "-o",
            "yaml",
            "-f",
            &path,
            "oci-cache.test/checked=yes",
        ];
        let Some(out) = run_tool(test, "kubectl", &args) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = docs.iter().filter(|(f, _)| f == file).count();
        assert_eq!(
            stdout.matches("oci-cache.test/checked: \"yes\"").count(),
            objects,
            "{file}:\n{stdout}"
        );
    }
}

/// The fleet manifest's `oci-cache.toml`, with its peer secret at a path of
/// the test's and the advertised URL the pod would get: the manifest's
/// placeholder secret is refused (so nobody runs a fleet on it), a real one
/// passes.
#[test]
fn the_fleet_manifest_config_refuses_its_placeholder_secret_and_takes_a_real_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let manifest = std::fs::read_to_string(dir.join("oci-cache-fleet.yaml")).unwrap();
    let block = |start: &str| -> String {
        manifest
            .split(start)
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.trim_start()))
            .collect()
    };
    let placeholder = manifest
        .split("peer-secret: \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let work = tempfile::tempdir().unwrap();
    let secret = work.path().join("peer-secret");
    let toml = block("oci-cache.toml: |\n").replace(
        "/etc/oci-cache-peer/peer-secret",
        &secret.display().to_string(),
    );
    let config = work.path().join("oci-cache.toml");
    std::fs::write(&config, toml).unwrap();
    let check = |secret_text: &str| {
        std::fs::write(&secret, secret_text).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o440))
            .unwrap();
        Command::new(oci_cache_bin())
            .arg("check-config")
            .arg(&config)
            .env("OCI_CACHE_ADVERTISE_URL", "http://10.0.0.7:5000")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y")
            .output()
            .unwrap()
    };
    let refused = check(&placeholder);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    let accepted = check("3f9c2a7e5b1d40c8a6e2f7b9d1c3e5a7\n");
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(
        stdout.contains("fleet: advertised as http://10.0.0.7:5000"),
        "{stdout}"
    );
}

#[test]
fn generated_talos_and_certs_d_read_back_to_the_same_chains_through_the_cli() {
    let work = tempfile::tempdir().unwrap();
    let mirror = "http://10.0.0.5:5000";
    for prefix in [false, true] {
        let dir = work.path().join(if prefix { "prefix" } else { "ns" });
        let out = dir.display().to_string();
        let mut common = vec!["--mirror", mirror, "--output", &out];
        if prefix {
            common.push("--path-prefix");
        }
        let generate = |kind: &str, extra: &[&str]| {
            let mut args = vec!["client-config", kind];
            args.extend_from_slice(&common);
            args.extend_from_slice(extra);
            oci_cache(&args);
        };
        generate("talos", &[]);
        generate("talos", &["--form", "machine-patch"]);
        let certs_d = dir.join("certs.d").display().to_string();
        let mut args = vec![
            "client-config",
            "containerd",
            "--mirror",
            mirror,
            "--output",
            &certs_d,
        ];
        if prefix {
            args.push("--path-prefix");
        }
        oci_cache(&args);

        let sources = [
            ("--talos-config", dir.join("registry-mirrors.yaml")),
            ("--talos-config", dir.join("machine-registries.patch.yaml")),
            ("--containerd-hosts", dir.join("certs.d")),
        ];
        for (reference, origin) in [
            (
                "alpine:3.20",
                "https://registry-1.docker.io/v2/library/alpine/manifests/3.20",
            ),
            (
                "ghcr.io/org/app:v1",
                "https://ghcr.io/v2/org/app/manifests/v1",
            ),
            (
                "registry.k8s.io/pause:3.10",
                "https://registry.k8s.io/v2/pause/manifests/3.10",
            ),
        ] {
            let chains: Vec<Vec<String>> = sources
                .iter()
                .map(|(flag, path)| {
                    let json = oci_cache(&[
                        "resolve",
                        "--json",
                        flag,
                        &path.display().to_string(),
                        reference,
                    ]);
                    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                    value["endpoints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e.as_str().unwrap().to_owned())
                        .collect()
                })
                .collect();
            let first = &chains[0];
            assert!(chains.iter().all(|c| c == first), "{reference}: {chains:?}");
            assert_eq!(first.len(), 2, "{reference}: {first:?}");
            assert!(first[0].starts_with(mirror), "{reference}: {first:?}");
            if prefix {
                let registry = match reference.split_once('/') {
                    Some((first, _)) if first.contains('.') => first,
                    _ => "docker.io",
                };
                assert!(
                    first[0].starts_with(&format!("{mirror}/v2/{registry}/")),
                    "{first:?}"
                );
            } else {
                assert!(first[0].contains("?ns="), "{first:?}");
            }
            assert_eq!(first[1], origin);
        }
    }
}

/// `--local-registry`: an image pushed to the mirror's hosted `local/…` is
/// pulled by ctr under the name developers push to (`localhost:PORT/local`,
/// where nothing listens) through the generated hosts.toml alone.
#[test]
fn containerd_pulls_the_pushed_name_from_the_hosted_repository() {
    let test = "containerd_pulls_the_pushed_name_from_the_hosted_repository";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 163);
    let origin = Origin::start();
    let config = write_mirror_config(work.path(), &[("a.test", &origin)]);
    let mirror = Mirror::start_oci_cache_args(&[
        "--config".into(),
        config.display().to_string(),
        "--local-prefix".into(),
        "local".into(),
    ]);
    skopeo::push(&app, &mirror.host(), "local/app:v1");
    let local = format!("localhost:{}", free_port());
    let certs_d = work.path().join("certs.d");
    client_config(
        "containerd",
        &format!("http://{}", mirror.host()),
        &config,
        &certs_d,
        &["--local-registry", &format!("{local}/local")],
    );
    assert!(certs_d.join(&local).join("hosts.toml").is_file());

    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, &format!("{local}/local/app:v1"))
        .unwrap();
    assert_fetched(&got, &app);
    // Only the harness's readiness probe: neither the mirror nor ctr.
    let others: Vec<String> = user_agents(&origin)
        .into_iter()
        .filter(|ua| !ua.starts_with("oci-cache-e2e"))
        .collect();
    assert_eq!(
        others,
        Vec::<String>::new(),
        "a hosted pull reached the origin"
    );
}
