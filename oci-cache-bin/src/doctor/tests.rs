//! Fixture nodes for the runtime versions not packaged here (containerd
//! 2.x config version 3, k3s) and each known way a configuration misses the mirror.

use std::path::Path;

use super::*;

const MIRROR: &str = "http://10.0.0.5:5000";

fn write(root: &Path, path: &str, text: &str) {
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

fn reachable() -> MirrorCheck {
    MirrorCheck {
        url: MIRROR.to_owned(),
        reachable: true,
        detail: "fixture".to_owned(),
    }
}

fn diagnose_root(root: &Path, upstreams: &[&str], default_upstream: &str) -> Report {
    let mirror = MirrorUrl::parse(MIRROR).unwrap();
    let upstreams: Vec<String> = upstreams.iter().map(|u| (*u).to_owned()).collect();
    let node = Node {
        root,
        mirror: &mirror,
        upstreams: &upstreams,
        default_upstream,
        talos_configs: &[],
    };
    diagnose(&node, reachable(), false).unwrap()
}

fn route<'r>(report: &'r Report, runtime: &str, upstream: &str) -> &'r UpstreamRoute {
    report
        .runtimes
        .iter()
        .find(|r| r.runtime == runtime)
        .unwrap()
        .upstreams
        .iter()
        .find(|u| u.upstream == upstream)
        .unwrap()
}

fn codes(report: &Report, runtime: &str, upstream: &str) -> Vec<&'static str> {
    let route = route(report, runtime, upstream);
    route.problems.iter().map(|p| p.code).collect()
}

/// The hosts.toml `client-config containerd` writes for `upstream` against MIRROR.
fn generated_hosts(upstream: Option<&str>) -> String {
    let server = upstream.map_or(String::new(), |u| format!("server = \"https://{u}\"\n"));
    format!("{server}[host.\"{MIRROR}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

const V3_ONE_DIR: &str = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

#[test]
fn containerd_2_config_v3_with_certs_d_passes() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/etc/containerd/config.toml", V3_ONE_DIR);
    write(
        root.path(),
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        &generated_hosts(Some("registry-1.docker.io")),
    );
    write(
        root.path(),
        "/etc/containerd/certs.d/_default/hosts.toml",
        &generated_hosts(None),
    );
    let report = diagnose_root(root.path(), &["docker.io", "ghcr.io"], "docker.io");
    assert_eq!(report.verdict, "pass", "{}", render_text(&report));
    assert_eq!(report.exit_code, EXIT_OK);
    let ghcr = &report.runtimes[0].upstreams[1];
    assert_eq!(ghcr.endpoints, [MIRROR, "https://ghcr.io"]);
    assert_eq!(
        ghcr.source.as_deref(),
        Some("/etc/containerd/certs.d/_default/hosts.toml")
    );
}

#[test]
fn containerd_wrong_host_is_named_with_both_addresses() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/etc/containerd/config.toml", V3_ONE_DIR);
    write(
        root.path(),
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        "[host.\"http://10.0.0.5:5001\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(report.exit_code, EXIT_BYPASSED);
    let problem = &report.runtimes[0].upstreams[0].problems[0];
    assert_eq!(problem.code, "wrong-host");
    assert!(
        problem
            .message
            .contains("http://10.0.0.5:5001, not the mirror http://10.0.0.5:5000"),
        "{}",
        problem.message
    );
}

#[test]
fn containerd_without_default_dir_misses_other_registries() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/etc/containerd/config.toml", V3_ONE_DIR);
    write(
        root.path(),
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        &generated_hosts(None),
    );
    let report = diagnose_root(root.path(), &["docker.io", "quay.io"], "docker.io");
    assert_eq!(
        codes(&report, "containerd", "docker.io"),
        Vec::<&str>::new()
    );
    assert_eq!(codes(&report, "containerd", "quay.io"), ["no-hosts-toml"]);
    assert_eq!(report.exit_code, EXIT_BYPASSED);
}

#[test]
fn containerd_config_v2_without_config_path_ignores_certs_d() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/etc/containerd/config.toml", "version = 2\n");
    write(
        root.path(),
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        &generated_hosts(None),
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(
        codes(&report, "containerd", "docker.io"),
        ["config-path-not-set"]
    );
    let fix = &report.runtimes[0].upstreams[0].problems[0].fix;
    assert!(
        fix.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
        "{fix}"
    );
}

#[test]
fn containerd_2_transfer_service_ignores_a_two_directory_config_path() {
    let root = tempfile::tempdir().unwrap();
    // containerd 2.2's default config_path is two directories.
    write(root.path(), "/etc/containerd/config.toml", "version = 3\n");
    write(
        root.path(),
        "/etc/containerd/certs.d/_default/hosts.toml",
        &generated_hosts(None),
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(
        codes(&report, "containerd", "docker.io"),
        ["transfer-service-config-path"]
    );
    // The local pull reads the list: the same tree then passes.
    write(
        root.path(),
        "/etc/containerd/config.toml",
        "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n",
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(report.verdict, "pass", "{}", render_text(&report));
}

#[test]
fn containerd_first_directory_of_config_path_wins_with_its_default() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "/etc/containerd/config.toml",
        "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n",
    );
    write(
        root.path(),
        "/etc/containerd/certs.d/_default/hosts.toml",
        "[host.\"http://old:5000\"]\n",
    );
    write(
        root.path(),
        "/etc/docker/certs.d/docker.io/hosts.toml",
        &generated_hosts(None),
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    let route = &report.runtimes[0].upstreams[0];
    assert_eq!(
        route.source.as_deref(),
        Some("/etc/containerd/certs.d/_default/hosts.toml")
    );
    assert_eq!(codes(&report, "containerd", "docker.io"), ["wrong-host"]);
}

#[test]
fn k3s_registries_yaml_passes_and_a_missing_entry_fails() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "/etc/rancher/k3s/registries.yaml",
        &format!("mirrors:\n  \"docker.io\":\n    endpoint:\n      - \"{MIRROR}\"\n"),
    );
    let report = diagnose_root(root.path(), &["docker.io", "ghcr.io"], "docker.io");
    assert_eq!(codes(&report, "k3s", "docker.io"), Vec::<&str>::new());
    assert_eq!(codes(&report, "k3s", "ghcr.io"), ["no-mirror-entry"]);
    let docker_io = &report.runtimes[0].upstreams[0];
    assert_eq!(docker_io.endpoints, [MIRROR, "https://docker.io"]);
}

#[test]
fn docker_needs_docker_io_as_the_mirrors_default_and_insecure_http() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "/etc/docker/daemon.json",
        &format!("{{\"registry-mirrors\": [\"{MIRROR}\"], \"insecure-registries\": [\"10.0.0.5:5000\"]}}"),
    );
    assert_eq!(
        diagnose_root(root.path(), &["docker.io"], "docker.io").exit_code,
        EXIT_OK
    );
    let report = diagnose_root(root.path(), &["docker.io", "b.test"], "b.test");
    assert_eq!(
        codes(&report, "docker", "docker.io"),
        ["docker-default-upstream"]
    );
    write(
        root.path(),
        "/etc/docker/daemon.json",
        &format!("{{\"registry-mirrors\": [\"{MIRROR}\"]}}"),
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(
        codes(&report, "docker", "docker.io"),
        ["mirror-not-insecure"]
    );
}

#[test]
fn podman_path_prefix_location_and_insecure_are_checked() {
    let root = tempfile::tempdir().unwrap();
    let entry = |location: &str, insecure: bool| {
        format!("[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"ghcr.io\"\n\n[[registry.mirror]]\nlocation = \"{location}\"\ninsecure = {insecure}\n")
    };
    write(
        root.path(),
        "/etc/containers/registries.conf.d/oci-cache.conf",
        &entry("10.0.0.5:5000/ghcr.io", true),
    );
    let report = diagnose_root(root.path(), &["ghcr.io"], "docker.io");
    assert_eq!(report.verdict, "pass", "{}", render_text(&report));
    assert_eq!(
        report.runtimes[0].upstreams[0].endpoints,
        ["http://10.0.0.5:5000/ghcr.io", "https://ghcr.io"]
    );
    write(
        root.path(),
        "/etc/containers/registries.conf.d/oci-cache.conf",
        &entry("10.0.0.5:5000", true),
    );
    assert_eq!(
        codes(
            &diagnose_root(root.path(), &["ghcr.io"], "docker.io"),
            "podman",
            "ghcr.io"
        ),
        ["wrong-path"]
    );
    write(
        root.path(),
        "/etc/containers/registries.conf.d/oci-cache.conf",
        &entry("10.0.0.5:5000/ghcr.io", false),
    );
    assert_eq!(
        codes(
            &diagnose_root(root.path(), &["ghcr.io"], "docker.io"),
            "podman",
            "ghcr.io"
        ),
        ["mirror-not-insecure"]
    );
    // A later file replaces the entry for the same prefix.
    write(
        root.path(),
        "/etc/containers/registries.conf.d/zz-other.conf",
        &entry("10.9.9.9:5000/ghcr.io", true),
    );
    assert_eq!(
        codes(
            &diagnose_root(root.path(), &["ghcr.io"], "docker.io"),
            "podman",
            "ghcr.io"
        ),
        ["wrong-host"]
    );
}

#[test]
fn an_empty_root_is_no_runtime_and_an_unreachable_mirror_wins() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        diagnose_root(root.path(), &["docker.io"], "docker.io").exit_code,
        EXIT_NO_RUNTIME
    );
    let mirror = MirrorUrl::parse(MIRROR).unwrap();
    let upstreams = vec!["docker.io".to_owned()];
    let node = Node {
        root: root.path(),
        mirror: &mirror,
        upstreams: &upstreams,
        default_upstream: "docker.io",
        talos_configs: &[],
    };
    let down = MirrorCheck {
        url: MIRROR.to_owned(),
        reachable: false,
        detail: "refused".to_owned(),
    };
    assert_eq!(
        diagnose(&node, down, true).unwrap().exit_code,
        EXIT_MIRROR_UNREACHABLE
    );
}

fn warnings(report: &Report, runtime: &str, upstream: &str) -> Vec<&'static str> {
    let route = route(report, runtime, upstream);
    route.warnings.iter().map(|p| p.code).collect()
}

/// What `client-config talos --mirror MIRROR` writes (Talos ≥ 1.12 documents).
fn talos_documents(skip_fallback: bool) -> String {
    let skip = if skip_fallback {
        "skipFallback: true\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: \"docker.io\"\nendpoints:\n  - url: \"{MIRROR}\"\n{skip}---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: \"*\"\nendpoints:\n  - url: \"{MIRROR}\"\n{skip}"
    )
}

#[test]
fn talos_documents_pass_and_a_missing_skip_fallback_is_a_warning_only() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), talos::STATE_CONFIG, &talos_documents(false));
    let report = diagnose_root(root.path(), &["docker.io", "ghcr.io"], "docker.io");
    assert_eq!(report.exit_code, EXIT_OK, "{}", render_text(&report));
    assert_eq!(codes(&report, "talos", "docker.io"), Vec::<&str>::new());
    assert_eq!(warnings(&report, "talos", "docker.io"), ["silent-fallback"]);
    // ghcr.io goes through the "*" document.
    assert_eq!(warnings(&report, "talos", "ghcr.io"), ["silent-fallback"]);
    let ghcr = &report.runtimes[0].upstreams[1];
    assert_eq!(ghcr.endpoints, [MIRROR, "https://ghcr.io"]);
    assert!(render_text(&report).contains("warning:"));

    write(root.path(), talos::STATE_CONFIG, &talos_documents(true));
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(report.exit_code, EXIT_OK);
    assert!(warnings(&report, "talos", "docker.io").is_empty());
    assert_eq!(report.runtimes[0].upstreams[0].endpoints, [MIRROR]);
}

#[test]
fn talos_machine_patch_names_a_wrong_port_and_a_missing_docker_io() {
    let root = tempfile::tempdir().unwrap();
    // Seed 002's layout: one port per upstream, the node pointed at 5001.
    write(
        root.path(),
        talos::STATE_CONFIG,
        "version: v1alpha1\nmachine:\n  registries:\n    mirrors:\n      registry.k8s.io:\n        endpoints:\n          - http://10.0.0.5:5001\n        skipFallback: true\n",
    );
    let report = diagnose_root(root.path(), &["docker.io", "registry.k8s.io"], "docker.io");
    assert_eq!(report.exit_code, EXIT_BYPASSED);
    assert_eq!(codes(&report, "talos", "docker.io"), ["no-mirror-entry"]);
    assert_eq!(codes(&report, "talos", "registry.k8s.io"), ["wrong-host"]);
    let text = render_text(&report);
    assert!(
        text.contains("http://10.0.0.5:5001, not the mirror"),
        "{text}"
    );
}

#[test]
fn talos_override_path_must_match_the_endpoint_path() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("mc.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: docker.io\nendpoints:\n  - url: {MIRROR}/v2/docker.io\n    overridePath: true\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: ghcr.io\nendpoints:\n  - url: {MIRROR}/v2/ghcr.io\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: gcr.io\nendpoints:\n  - url: {MIRROR}/v2/ghcr.io\n    overridePath: true\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: quay.io\nendpoints:\n  - url: {MIRROR}\n    overridePath: true\n"
        ),
    )
    .unwrap();
    let mirror = MirrorUrl::parse(MIRROR).unwrap();
    let upstreams: Vec<String> = ["docker.io", "ghcr.io", "gcr.io", "quay.io"]
        .map(str::to_owned)
        .to_vec();
    let files = [file];
    let node = Node {
        root: root.path(),
        mirror: &mirror,
        upstreams: &upstreams,
        default_upstream: "docker.io",
        talos_configs: &files,
    };
    let report = diagnose(&node, reachable(), false).unwrap();
    assert_eq!(codes(&report, "talos", "docker.io"), Vec::<&str>::new());
    assert_eq!(
        codes(&report, "talos", "ghcr.io"),
        ["path-without-override-path"]
    );
    assert_eq!(codes(&report, "talos", "gcr.io"), ["wrong-path"]);
    assert_eq!(
        codes(&report, "talos", "quay.io"),
        ["override-path-without-path"]
    );
    assert_eq!(report.exit_code, EXIT_BYPASSED);
}

#[test]
fn talosctl_get_machineconfig_output_is_read_through_its_spec() {
    let root = tempfile::tempdir().unwrap();
    let inner = format!(
        "version: v1alpha1\nmachine:\n  registries:\n    mirrors:\n      docker.io:\n        endpoints:\n          - {MIRROR}\n"
    );
    let spec: String = inner.lines().map(|l| format!("    {l}\n")).collect();
    write(
        root.path(),
        talos::STATE_CONFIG,
        &format!("node: 10.5.0.2\nmetadata:\n  namespace: config\n  type: MachineConfigs.config.talos.dev\n  id: v1alpha1\nspec: |\n{spec}"),
    );
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(report.exit_code, EXIT_OK, "{}", render_text(&report));
    assert_eq!(
        report.runtimes[0].upstreams[0].endpoints,
        [MIRROR, "https://docker.io"]
    );
    write(root.path(), talos::STATE_CONFIG, "machine: [unclosed\n");
    let report = diagnose_root(root.path(), &["docker.io"], "docker.io");
    assert_eq!(
        codes(&report, "talos", "docker.io"),
        ["invalid-talos-config"]
    );
}
