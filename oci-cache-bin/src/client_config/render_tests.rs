//! Every KIND rendered for the five common upstreams; the Talos and
//! containerd outputs read back through the project's own importers.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use oci_cache_core::mirror::{containerd, talos, Import, MirrorConfig};

use super::super::MirrorUrl;
use super::*;

/// Upstreams in name order, as `config::resolve` gives them.
pub(super) fn request<'a>(mirrors: &'a MirrorConfig, mirror: &str) -> Request<'a> {
    let mut upstreams: Vec<_> = mirrors.upstreams.iter().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    Request::plain(
        MirrorUrl::parse(mirror).unwrap(),
        upstreams,
        mirrors.default_upstream.as_str(),
    )
}

pub(super) fn one(files: Vec<GeneratedFile>) -> GeneratedFile {
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

/// `(url, override_path)` of each endpoint tried for `name`, in order.
fn chain(mirrors: &MirrorConfig, name: &str) -> Vec<(String, bool)> {
    mirrors
        .lookup(name)
        .unwrap()
        .chain()
        .iter()
        .map(|e| (e.url.clone(), e.override_path))
        .collect()
}

/// The chain a client configured with `request` follows for each upstream:
/// the mirror, then the upstream's own origin.
fn expected_chains(request: &Request<'_>) -> Vec<(String, Vec<(String, bool)>)> {
    request
        .upstreams
        .iter()
        .map(|u| {
            let name = u.name.as_str();
            (
                name.to_owned(),
                vec![
                    (endpoint_url(request, name), request.path_prefix),
                    (u.origin.url.clone(), false),
                ],
            )
        })
        .collect()
}

fn chains_after(import: Import) -> Vec<(String, Vec<(String, bool)>)> {
    let mut mirrors = MirrorConfig::common();
    mirrors.apply_import(import).unwrap();
    mirrors.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    mirrors
        .upstreams
        .iter()
        .map(|u| (u.name.as_str().to_owned(), chain(&mirrors, u.name.as_str())))
        .collect()
}

fn import_tree(files: &[GeneratedFile]) -> Import {
    let mut import = Import::default();
    for f in files {
        let dir = f
            .path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        import.extend(containerd::parse_hosts_toml(dir, &f.contents, "test").unwrap());
    }
    import
}

#[test]
fn containerd_tree_reads_back_to_mirror_then_origin_for_every_upstream() {
    let mirrors = MirrorConfig::common();
    for path_prefix in [false, true] {
        let mut req = request(&mirrors, "http://10.0.0.5:5000");
        req.path_prefix = path_prefix;
        let files = render(ClientKind::Containerd, &req).unwrap();
        let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
        let mut want = vec![
            "docker.io/hosts.toml",
            "gcr.io/hosts.toml",
            "ghcr.io/hosts.toml",
            "quay.io/hosts.toml",
            "registry.k8s.io/hosts.toml",
        ];
        // Name order: `request` sorts as config::resolve does.
        if !path_prefix {
            want.push("_default/hosts.toml");
        }
        assert_eq!(paths, want);
        let hub = &files[0].contents;
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\""),
            "{hub}"
        );
        assert!(
            hub.contains("capabilities = [\"pull\", \"resolve\"]"),
            "{hub}"
        );
        assert!(hub.contains("dial_timeout = \"1s\""), "{hub}");
        let import = import_tree(&files);
        let wildcard = import
            .mirrors
            .iter()
            .any(|m| m.scope == MirrorScope::Wildcard);
        assert_eq!(wildcard, !path_prefix);
        assert_eq!(
            chains_after(import),
            expected_chains(&req),
            "path_prefix {path_prefix}"
        );
    }
}

use oci_cache_core::mirror::MirrorScope;

#[test]
fn talos_documents_and_machine_patch_read_back_to_the_same_chains() {
    let mirrors = MirrorConfig::common();
    for path_prefix in [false, true] {
        let mut req = request(&mirrors, "http://10.0.0.5:5000");
        req.path_prefix = path_prefix;
        let docs = one(render(ClientKind::Talos, &req).unwrap());
        assert_eq!(docs.path, PathBuf::from("registry-mirrors.yaml"));
        req.form = Some(Form::MachinePatch);
        let patch = one(render(ClientKind::Talos, &req).unwrap());
        assert_eq!(patch.path, PathBuf::from("machine-registries.patch.yaml"));
        let from_docs = talos::parse(&docs.contents, "docs").unwrap();
        let from_patch = talos::parse(&patch.contents, "patch").unwrap();
        assert!(from_docs.warnings.is_empty() && from_patch.warnings.is_empty());
        // Six documents (five upstreams and `*`) without path prefix.
        assert_eq!(from_docs.mirrors.len(), if path_prefix { 5 } else { 6 });
        assert_eq!(from_patch.mirrors.len(), from_docs.mirrors.len());
        let want = expected_chains(&req);
        assert_eq!(
            chains_after(from_docs),
            want,
            "documents, path_prefix {path_prefix}"
        );
        assert_eq!(
            chains_after(from_patch),
            want,
            "patch, path_prefix {path_prefix}"
        );
    }
}

#[test]
fn talos_inlines_the_ca_of_an_https_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "https://mirror.example:8443");
    req.ca_file = Some(ca);
    let docs = one(render(ClientKind::Talos, &req).unwrap()).contents;
    assert!(docs.contains("kind: RegistryTLSConfig\nname: \"mirror.example:8443\"\nca: |\n  -----BEGIN CERTIFICATE-----\n  MIIB\n"), "{docs}");
    let import = talos::parse(&docs, "docs").unwrap();
    assert!(
        import.warnings[0].contains("inline PEM"),
        "{:?}",
        import.warnings
    );
}

#[test]
fn docker_daemon_json_mirrors_docker_hub_and_trusts_an_http_mirror() {
    let mirrors = MirrorConfig::common();
    let req = request(&mirrors, "http://10.0.0.5:5000");
    let json: serde_json::Value =
        serde_json::from_str(&one(render(ClientKind::Docker, &req).unwrap()).contents).unwrap();
    assert_eq!(
        json,
        json!({"registry-mirrors": ["http://10.0.0.5:5000"], "insecure-registries": ["10.0.0.5:5000"]})
    );
    let req = request(&mirrors, "https://mirror.example");
    let json: serde_json::Value =
        serde_json::from_str(&one(render(ClientKind::Docker, &req).unwrap()).contents).unwrap();
    assert_eq!(
        json,
        json!({"registry-mirrors": ["https://mirror.example"]})
    );

    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    req.upstreams.retain(|u| u.name.as_str() == "ghcr.io");
    let err = render(ClientKind::Docker, &req).unwrap_err();
    assert!(err.contains("docker.io only"), "{err}");
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    req.default_upstream = "ghcr.io";
    let err = render(ClientKind::Docker, &req).unwrap_err();
    assert!(err.contains("default_upstream = \"docker.io\""), "{err}");
}

#[test]
fn podman_registries_conf_mirrors_each_upstream_by_path_prefix() {
    let mirrors = MirrorConfig::common();
    let req = request(&mirrors, "http://10.0.0.5:5000");
    let text = one(render(ClientKind::Podman, &req).unwrap()).contents;
    let conf: toml::Table = toml::from_str(&text).unwrap();
    let registries = conf["registry"].as_array().unwrap();
    assert_eq!(registries.len(), 5);
    let ghcr = registries
        .iter()
        .find(|r| r["prefix"].as_str() == Some("ghcr.io"))
        .unwrap();
    assert_eq!(ghcr["location"].as_str(), Some("ghcr.io"));
    let mirror = &ghcr["mirror"].as_array().unwrap()[0];
    assert_eq!(mirror["location"].as_str(), Some("10.0.0.5:5000/ghcr.io"));
    assert_eq!(mirror["insecure"].as_bool(), Some(true));
}

#[test]
fn buildkit_and_earthly_carry_the_same_registry_tables() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    let text = one(render(ClientKind::Buildkit, &req).unwrap()).contents;
    let conf: toml::Table = toml::from_str(&text).unwrap();
    let registry = conf["registry"].as_table().unwrap();
    assert_eq!(
        registry["docker.io"]["mirrors"][0].as_str(),
        Some("10.0.0.5:5000")
    );
    assert_eq!(registry["10.0.0.5:5000"]["http"].as_bool(), Some(true));
    assert_eq!(registry.len(), 6);

    req.form = Some(Form::Earthly);
    let earthly = one(render(ClientKind::Buildkit, &req).unwrap());
    let yaml: serde_norway::Value = serde_norway::from_str(&earthly.contents).unwrap();
    let embedded = yaml["global"]["buildkit_additional_config"]
        .as_str()
        .unwrap();
    assert_eq!(toml::from_str::<toml::Table>(embedded).unwrap(), conf);
}

#[test]
fn kind_mounts_the_generated_tree_where_its_containerd_patch_points() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://192.168.1.10:5000");
    req.output = Some(PathBuf::from("/srv/kind"));
    let files = render(ClientKind::Kind, &req).unwrap();
    assert_eq!(files[0].path, PathBuf::from("kind-config.yaml"));
    assert_eq!(files.len(), 7, "config, five upstreams and _default");
    assert!(files[1].path.starts_with("certs.d"));
    let yaml: serde_norway::Value = serde_norway::from_str(&files[0].contents).unwrap();
    assert_eq!(yaml["kind"].as_str(), Some("Cluster"));
    let patch = yaml["containerdConfigPatches"][0].as_str().unwrap();
    let patch: toml::Table = toml::from_str(patch).unwrap();
    let mount = &yaml["nodes"][0]["extraMounts"][0];
    assert_eq!(mount["hostPath"].as_str(), Some("/srv/kind/certs.d"));
    assert_eq!(
        patch["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"].as_str(),
        mount["containerPath"].as_str()
    );
}

#[test]
fn k3s_registries_yaml_lists_the_mirror_per_upstream() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "https://mirror.example:8443");
    req.ca_file = Some(PathBuf::from("/etc/ssl/oci-cache-ca.pem"));
    let text = one(render(ClientKind::K3s, &req).unwrap()).contents;
    let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(
        yaml["mirrors"]["registry.k8s.io"]["endpoint"][0].as_str(),
        Some("https://mirror.example:8443")
    );
    assert_eq!(
        yaml["configs"]["mirror.example:8443"]["tls"]["ca_file"].as_str(),
        Some("/etc/ssl/oci-cache-ca.pem")
    );
}

#[test]
fn options_that_do_not_fit_the_kind_are_refused() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    req.path_prefix = true;
    assert!(render(ClientKind::Docker, &req)
        .unwrap_err()
        .contains("--path-prefix"));
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    req.form = Some(Form::Earthly);
    assert!(render(ClientKind::Talos, &req)
        .unwrap_err()
        .contains("--form"));
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    req.ca_file = Some(PathBuf::from("/ca.pem"));
    assert!(render(ClientKind::K3s, &req)
        .unwrap_err()
        .contains("https://"));
}

#[test]
fn an_https_mirror_gets_its_ca_where_the_client_takes_a_path() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "https://mirror.example:8443");
    let hub = render(ClientKind::Containerd, &req)
        .unwrap()
        .remove(0)
        .contents;
    assert!(
        hub.contains("[host.\"https://mirror.example:8443\"]"),
        "{hub}"
    );
    assert!(
        hub.contains("# For a certificate from a private CA"),
        "{hub}"
    );
    req.ca_file = Some(PathBuf::from("/etc/containerd/certs.d/ca.pem"));
    let files = render(ClientKind::Containerd, &req).unwrap();
    let import = import_tree(&files);
    assert!(
        import.warnings.iter().all(|w| !w.contains("ca")),
        "{:?}",
        import.warnings
    );
    let mut mirrors_after = MirrorConfig::common();
    mirrors_after.apply_import(import).unwrap();
    let endpoint = &mirrors_after.lookup("ghcr.io").unwrap().endpoints[0];
    assert_eq!(
        endpoint.tls.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/containerd/certs.d/ca.pem"))
    );
    let buildkit = one(render(ClientKind::Buildkit, &req).unwrap()).contents;
    let conf: toml::Table = toml::from_str(&buildkit).unwrap();
    let mirror = &conf["registry"]["mirror.example:8443"];
    assert_eq!(
        mirror["ca"][0].as_str(),
        Some("/etc/containerd/certs.d/ca.pem")
    );
    assert!(mirror.get("http").is_none());
    let podman = one(render(ClientKind::Podman, &req).unwrap()).contents;
    assert!(!podman.contains("insecure"), "{podman}");
    assert!(
        podman.contains("/etc/containers/certs.d/mirror.example:8443/ca.crt"),
        "{podman}"
    );
}

pub(super) fn with_auth<'a>(mirrors: &'a MirrorConfig, mirror: &str) -> Request<'a> {
    let mut req = request(mirrors, mirror);
    req.auth =
        Some(serde_json::from_value(json!({"username": "node", "password_env": "PATH"})).unwrap());
    req.auth.as_mut().unwrap().password = "pa\"ss:w0rd".to_owned();
    req
}

/// `Basic base64("node:pa\"ss:w0rd")`.
pub(super) const NODE_BASIC: &str = "Basic bm9kZTpwYSJzczp3MHJk";

#[test]
fn containerd_and_kind_send_the_basic_header_to_the_mirror_host_only() {
    let mirrors = MirrorConfig::common();
    let req = with_auth(&mirrors, "https://mirror.example:8443");
    for kind in [ClientKind::Containerd, ClientKind::Kind] {
        let files = render(kind, &req).unwrap();
        let trees: Vec<&GeneratedFile> = files
            .iter()
            .filter(|f| f.path.ends_with("hosts.toml"))
            .collect();
        assert_eq!(trees.len(), 6, "{kind:?}");
        for f in trees {
            let conf: toml::Table = toml::from_str(&f.contents).unwrap();
            let hosts = conf["host"].as_table().unwrap();
            assert_eq!(hosts.len(), 1, "{}", f.contents);
            let mirror = &hosts["https://mirror.example:8443"];
            assert_eq!(
                mirror["header"]["Authorization"].as_array().unwrap(),
                &vec![toml::Value::from(NODE_BASIC)],
                "{}",
                f.contents
            );
            // The origin (`server`) is not a host entry: no header reaches it.
            assert!(!f.contents.contains("pa\"ss"), "{}", f.contents);
        }
    }
    let plain = render(ClientKind::Containerd, &request(&mirrors, "http://m:5000")).unwrap();
    assert!(plain.iter().all(|f| !f.contents.contains("header")));
}

#[test]
fn talos_documents_and_patch_carry_the_mirror_credentials() {
    let mirrors = MirrorConfig::common();
    let mut req = with_auth(&mirrors, "http://10.0.0.5:5000");
    let docs = one(render(ClientKind::Talos, &req).unwrap()).contents;
    let auth: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&docs)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_norway::Value| d["kind"].as_str() == Some("RegistryAuthConfig"))
        .collect();
    assert_eq!(auth.len(), 1, "{docs}");
    assert_eq!(auth[0]["apiVersion"].as_str(), Some("v1alpha1"));
    assert_eq!(auth[0]["name"].as_str(), Some("10.0.0.5:5000"));
    assert_eq!(auth[0]["username"].as_str(), Some("node"));
    assert_eq!(auth[0]["password"].as_str(), Some("pa\"ss:w0rd"));

    req.form = Some(Form::MachinePatch);
    let patch = one(render(ClientKind::Talos, &req).unwrap()).contents;
    let yaml: serde_norway::Value = serde_norway::from_str(&patch).unwrap();
    let auth = &yaml["machine"]["registries"]["config"]["10.0.0.5:5000"]["auth"];
    assert_eq!(auth["username"].as_str(), Some("node"));
    assert_eq!(auth["password"].as_str(), Some("pa\"ss:w0rd"));
    // The project's own importer still reads the same mirror chains.
    let import = talos::parse(&patch, "patch").unwrap();
    assert_eq!(chains_after(import), expected_chains(&req));
}

#[test]
fn k3s_configs_the_mirror_host_with_auth_and_tls() {
    let mirrors = MirrorConfig::common();
    let mut req = with_auth(&mirrors, "https://mirror.example:8443");
    req.ca_file = Some(PathBuf::from("/etc/ssl/oci-cache-ca.pem"));
    let text = one(render(ClientKind::K3s, &req).unwrap()).contents;
    let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let config = &yaml["configs"]["mirror.example:8443"];
    assert_eq!(config["auth"]["username"].as_str(), Some("node"));
    assert_eq!(config["auth"]["password"].as_str(), Some("pa\"ss:w0rd"));
    assert_eq!(
        config["tls"]["ca_file"].as_str(),
        Some("/etc/ssl/oci-cache-ca.pem")
    );
    req.ca_file = None;
    let text = one(render(ClientKind::K3s, &req).unwrap()).contents;
    let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(
        yaml["configs"]["mirror.example:8443"]["auth"]["username"].as_str(),
        Some("node")
    );
    assert!(yaml["configs"]["mirror.example:8443"].get("tls").is_none());
}

#[test]
fn docker_podman_and_buildkit_get_a_note_and_no_password() {
    let mirrors = MirrorConfig::common();
    let mut req = with_auth(&mirrors, "http://10.0.0.5:5000");
    let daemon: serde_json::Value =
        serde_json::from_str(&one(render(ClientKind::Docker, &req).unwrap()).contents).unwrap();
    assert_eq!(
        daemon,
        json!({"registry-mirrors": ["http://10.0.0.5:5000"], "insecure-registries": ["10.0.0.5:5000"]})
    );
    let note = auth_note(ClientKind::Docker, "http://10.0.0.5:5000").unwrap();
    assert!(note.contains("docker login 10.0.0.5:5000"), "{note}");
    assert!(
        note.contains("docker.io must be public") && note.contains("--public-upstream docker.io"),
        "{note}"
    );

    let podman = one(render(ClientKind::Podman, &req).unwrap()).contents;
    toml::from_str::<toml::Table>(&podman).unwrap();
    assert!(podman.contains("podman login 10.0.0.5:5000"), "{podman}");

    let buildkit = one(render(ClientKind::Buildkit, &req).unwrap()).contents;
    toml::from_str::<toml::Table>(&buildkit).unwrap();
    assert!(
        buildkit.contains("docker login 10.0.0.5:5000"),
        "{buildkit}"
    );
    req.form = Some(Form::Earthly);
    let earthly = one(render(ClientKind::Buildkit, &req).unwrap()).contents;
    serde_norway::from_str::<serde_norway::Value>(&earthly).unwrap();
    assert!(earthly.contains("docker login 10.0.0.5:5000"), "{earthly}");

    for text in [&podman, &buildkit, &earthly] {
        assert!(!text.contains("w0rd") && !text.contains("bm9k"), "{text}");
    }
    for kind in [
        ClientKind::Containerd,
        ClientKind::Talos,
        ClientKind::Kind,
        ClientKind::K3s,
    ] {
        assert_eq!(auth_note(kind, "http://10.0.0.5:5000"), None);
    }
    // Without --username the files say nothing about credentials.
    let podman = one(render(
        ClientKind::Podman,
        &request(&mirrors, "http://10.0.0.5:5000"),
    )
    .unwrap());
    assert!(!podman.contents.contains("login"), "{}", podman.contents);
}
