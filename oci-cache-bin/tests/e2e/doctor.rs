//! Issue 26: `oci-cache doctor` against the configuration `client-config`
//! generates, used by the real clients. Each test lays the generated files
//! out under a node root, shows doctor passes, shows the real client pulls
//! through the mirror with those very files (the origin saw only the
//! mirror), then breaks the files in each known way and shows doctor fails
//! naming the cause.

use std::path::Path;
use std::process::Command;

use super::clients::{
    assert_fetched, assert_only_the_mirror_reached, client_config, generate, mirror_over,
    write_mirror_config,
};
use super::fixtures::small_image;
use crate::support::containerd::Containerd;
use crate::support::dockerd::Dockerd;
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::podman::Podman;
use crate::support::registry::Origin;
use crate::support::{free_port, tools_available};

/// `oci-cache doctor --no-probe --mirror URL --root ROOT --config CONFIG
/// --json`: the exit code and the report.
fn doctor(mirror_url: &str, root: &Path, config: &Path) -> (i32, serde_json::Value) {
    doctor_with(&["--no-probe"], &[], mirror_url, root, config)
}

/// [`doctor`] with the probe: the runtime clients reach the test's daemons
/// by their own variables in `env`.
fn doctor_probing(
    env: &[(&str, &Path)],
    mirror_url: &str,
    root: &Path,
    config: &Path,
) -> (i32, serde_json::Value) {
    doctor_with(&[], env, mirror_url, root, config)
}

fn doctor_with(
    args: &[&str],
    env: &[(&str, &Path)],
    mirror_url: &str,
    root: &Path,
    config: &Path,
) -> (i32, serde_json::Value) {
    let out = Command::new(oci_cache_bin())
        .arg("doctor")
        .args(args)
        .args(["--json", "--mirror", mirror_url, "--root"])
        .arg(root)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The problem codes the report names for `runtime`'s `upstream`.
fn codes(report: &serde_json::Value, runtime: &str, upstream: &str) -> Vec<String> {
    let runtime = report["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["runtime"] == runtime)
        .unwrap_or_else(|| panic!("no {runtime} in {report:#}"));
    let route = runtime["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == upstream)
        .unwrap_or_else(|| panic!("no {upstream} in {runtime:#}"));
    route["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_owned())
        .collect()
}

/// The one probe of the report: the mirror saw it, the image is gone, and
/// the origin never saw the probe repository (the mirror answered it alone).
fn assert_probe_seen(report: &serde_json::Value, runtime: &str, origin: &Origin) {
    let probes = report["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 1, "{report:#}");
    assert_eq!(probes[0]["runtime"], runtime);
    assert_eq!(probes[0]["pulled"], true, "{report:#}");
    assert_eq!(probes[0]["seen_by_mirror"], true, "{report:#}");
    assert_eq!(probes[0]["removed"], true, "{report:#}");
    assert_eq!(origin.count("GET", "oci-cache-doctor"), 0);
    assert_eq!(origin.count("HEAD", "oci-cache-doctor"), 0);
}

fn url(mirror: &Mirror) -> String {
    format!("http://{}", mirror.host())
}

const CONTAINERD_CONFIG: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

#[test]
fn doctor_passes_the_certs_d_ctr_pulls_through_and_names_each_break() {
    let test = "doctor_passes_the_certs_d_ctr_pulls_through_and_names_each_break";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 170);
    let hub = Origin::start();
    let b = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub), ("b.test", &b)]);
    let root = work.path().join("node");
    let etc = root.join("etc/containerd");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), CONTAINERD_CONFIG).unwrap();
    let certs_d = etc.join("certs.d");
    generate("containerd", &mirror, &config, &certs_d);

    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["verdict"], "pass");
    // The files doctor passed are the ones ctr pulls through.
    let got = ctrd
        .fetch_with_hosts_dir(&certs_d, "b.test/e2e/app:v1")
        .unwrap();
    assert_fetched(&got, &app);
    assert_only_the_mirror_reached(&b, "containerd");
    // The probe: ctr pulls the nonce image through the same tree.
    let (code, report) = doctor_probing(
        &[("CONTAINERD_ADDRESS", ctrd.address())],
        &url(&mirror),
        &root,
        &config,
    );
    assert_eq!(code, 0, "{report:#}");
    assert_probe_seen(&report, "containerd", &hub);
    let left = ctrd
        .ctr_in("oci-cache-doctor", &["images", "ls", "-q"])
        .unwrap();
    assert!(left.trim().is_empty(), "the probe image stayed: {left}");

    // Wrong host: the docker.io file points at another port.
    let hub_file = certs_d.join("docker.io/hosts.toml");
    let generated = std::fs::read_to_string(&hub_file).unwrap();
    let other = format!("127.0.0.1:{}", free_port());
    std::fs::write(&hub_file, generated.replace(&mirror.host(), &other)).unwrap();
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(codes(&report, "containerd", "docker.io"), ["wrong-host"]);
    std::fs::write(&hub_file, &generated).unwrap();

    // No b.test directory and no _default: b.test goes to the registry itself.
    std::fs::remove_dir_all(certs_d.join("b.test")).unwrap();
    std::fs::remove_dir_all(certs_d.join("_default")).unwrap();
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(codes(&report, "containerd", "b.test"), ["no-hosts-toml"]);
    assert!(codes(&report, "containerd", "docker.io").is_empty());
    generate("containerd", &mirror, &config, &certs_d);

    // config_path not set: containerd ignores certs.d altogether.
    std::fs::write(etc.join("config.toml"), "version = 2\n").unwrap();
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        codes(&report, "containerd", "docker.io"),
        ["config-path-not-set"]
    );
    std::fs::write(etc.join("config.toml"), CONTAINERD_CONFIG).unwrap();

    // The mirror down: doctor says so with its own exit code.
    let mirror_url = url(&mirror);
    drop(mirror);
    let (code, report) = doctor(&mirror_url, &root, &config);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["verdict"], "mirror-unreachable");
    assert_eq!(report["mirror"]["reachable"], false);
}

#[test]
fn doctor_passes_the_daemon_json_dockerd_pulls_through_and_wants_docker_io_default() {
    let test = "doctor_passes_the_daemon_json_dockerd_pulls_through_and_wants_docker_io_default";
    if !tools_available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let alpine = small_image(&work.path().join("alpine"), 171);
    let hub = Origin::with_images(&[(&alpine, "library/alpine:3.20")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub)]);
    let root = work.path().join("node");
    let etc = root.join("etc/docker");
    generate("docker", &mirror, &config, &etc);
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 0, "{report:#}");
    let Some(dockerd) = Dockerd::start(test, &etc.join("daemon.json")) else {
        return;
    };
    dockerd.docker(&["pull", "alpine:3.20"]).unwrap();
    assert_only_the_mirror_reached(&hub, "dockerd");
    let socket = dockerd.host();
    let (code, report) = doctor_probing(
        &[("DOCKER_HOST", Path::new(&socket))],
        &url(&mirror),
        &root,
        &config,
    );
    assert_eq!(code, 0, "{report:#}");
    assert_probe_seen(&report, "docker", &hub);
    let left = dockerd
        .docker(&["images", "-q", "oci-cache-doctor/probe"])
        .unwrap();
    assert!(left.trim().is_empty(), "the probe image stayed: {left}");

    // A mirror whose default upstream is not docker.io answers dockerd's
    // unnamed requests with another registry's images.
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let b_config = write_mirror_config(&other, &[("b.test", &hub), ("docker.io", &hub)]);
    let (code, report) = doctor(&url(&mirror), &root, &b_config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        codes(&report, "docker", "docker.io"),
        ["docker-default-upstream"]
    );
}

#[test]
fn doctor_passes_the_registries_conf_podman_pulls_through_and_names_a_wrong_path() {
    let test = "doctor_passes_the_registries_conf_podman_pulls_through_and_names_a_wrong_path";
    if !tools_available(test) {
        return;
    }
    let Some(podman) = Podman::new(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 172);
    let hub = Origin::start();
    let b = Origin::with_images(&[(&app, "e2e/app:v1")]);
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub), ("b.test", &b)]);
    let root = work.path().join("node");
    let conf_d = root.join("etc/containers/registries.conf.d");
    generate("podman", &mirror, &config, &conf_d);
    let conf = conf_d.join("registries.conf");
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 0, "{report:#}");
    podman.run(&conf, &["pull", "b.test/e2e/app:v1"]).unwrap();
    assert_only_the_mirror_reached(&b, "podman");
    // The probe: podman (storage and engine settings of its own, by its
    // variables) pulls the nonce image through the same file.
    let podman_dir = work.path().join("podman-probe");
    std::fs::create_dir_all(&podman_dir).unwrap();
    let storage_conf = podman_dir.join("storage.conf");
    std::fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            podman_dir.join("root").display(),
            podman_dir.join("run").display()
        ),
    )
    .unwrap();
    let containers_conf = podman_dir.join("containers.conf");
    std::fs::write(
        &containers_conf,
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let probe_with = |registries_conf: &Path| {
        doctor_probing(
            &[
                ("CONTAINERS_REGISTRIES_CONF", registries_conf),
                ("CONTAINERS_STORAGE_CONF", storage_conf.as_path()),
                ("CONTAINERS_CONF", containers_conf.as_path()),
                ("HOME", podman_dir.as_path()),
            ],
            &url(&mirror),
            &root,
            &config,
        )
    };
    let (code, report) = probe_with(&conf);
    assert_eq!(code, 0, "{report:#}");
    assert_probe_seen(&report, "podman", &hub);

    // The files on disk are right, but podman reads another one (a runtime
    // not restarted, a variable overriding the file): only the probe sees it.
    let stale = podman_dir.join("stale-registries.conf");
    std::fs::write(&stale, "unqualified-search-registries = []\n").unwrap();
    let (code, report) = probe_with(&stale);
    assert_eq!(code, 5, "{report:#}");
    assert_eq!(report["verdict"], "probe-not-seen");
    assert_eq!(report["probes"][0]["seen_by_mirror"], false);
    assert!(report["runtimes"][0]["upstreams"][0]["via_mirror"] == true);

    // The mirror location without its path prefix: b.test would be asked
    // of the mirror's default upstream.
    let generated = std::fs::read_to_string(&conf).unwrap();
    let broken = generated.replace(
        &format!("{}/b.test\"", mirror.host()),
        &format!("{}\"", mirror.host()),
    );
    assert_ne!(broken, generated);
    std::fs::write(&conf, broken).unwrap();
    let (code, report) = doctor(&url(&mirror), &root, &config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(codes(&report, "podman", "b.test"), ["wrong-path"]);
    assert!(codes(&report, "podman", "docker.io").is_empty());
}

/// k3s is not installed here: the node root has k3s's layout (its
/// `registries.yaml`, the `certs.d` tree k3s writes from it, generated here
/// by `client-config containerd`, and its containerd socket path, linked to
/// the test's real containerd). The probe's `ctr --address` on that socket
/// is real; that k3s writes the same tree is an assumption of the layout.
#[test]
fn doctor_probes_k3s_with_ctr_on_its_own_socket() {
    let test = "doctor_probes_k3s_with_ctr_on_its_own_socket";
    if !tools_available(test) {
        return;
    }
    let Some(ctrd) = Containerd::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let hub = Origin::start();
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub)]);
    let root = work.path().join("node");
    generate("k3s", &mirror, &config, &root.join("etc/rancher/k3s"));
    let certs_d = root.join("var/lib/rancher/k3s/agent/etc/containerd/certs.d");
    generate("containerd", &mirror, &config, &certs_d);

    // No socket under the root: the configuration passes, nothing is probed.
    let (code, report) = doctor_probing(&[], &url(&mirror), &root, &config);
    assert_eq!(code, 0, "{report:#}");
    assert!(
        report["probes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );

    let run = root.join("run/k3s/containerd");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink(ctrd.address(), run.join("containerd.sock")).unwrap();
    // CONTAINERD_ADDRESS points elsewhere: the probe must use k3s's socket.
    let (code, report) = doctor_probing(
        &[("CONTAINERD_ADDRESS", Path::new("/nonexistent.sock"))],
        &url(&mirror),
        &root,
        &config,
    );
    assert_eq!(code, 0, "{report:#}");
    assert_probe_seen(&report, "k3s", &hub);
    let left = ctrd
        .ctr_in("oci-cache-doctor", &["images", "ls", "-q"])
        .unwrap();
    assert!(left.trim().is_empty(), "the probe image stayed: {left}");
}

/// The Talos documents `client-config talos` writes pass the doctor (a
/// `--talos-machine-config` file, as Talos has no shell), with the silent
/// fallback warned about until `--skip-fallback` is given.
#[test]
fn doctor_passes_the_generated_talos_documents_and_warns_until_skip_fallback() {
    let work = tempfile::tempdir().unwrap();
    let hub = Origin::start();
    let (mirror, config) = mirror_over(work.path(), &[("docker.io", &hub)]);
    let empty_root = work.path().join("node");
    std::fs::create_dir_all(&empty_root).unwrap();
    for (dir, args, warned) in [
        ("plain", &[][..], true),
        ("strict", &["--skip-fallback"][..], false),
    ] {
        let out = work.path().join(dir);
        client_config("talos", &url(&mirror), &config, &out, args);
        let file = out.join("registry-mirrors.yaml");
        let file = file.to_str().unwrap();
        let (code, report) = doctor_with(
            &["--no-probe", "--talos-machine-config", file],
            &[],
            &url(&mirror),
            &empty_root,
            &config,
        );
        assert_eq!(code, 0, "{report:#}");
        let route = &report["runtimes"][0]["upstreams"][0];
        assert_eq!(report["runtimes"][0]["runtime"], "talos");
        assert_eq!(route["via_mirror"], true);
        assert_eq!(route.get("warnings").is_some(), warned, "{report:#}");
    }
}
