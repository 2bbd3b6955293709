//! `--local-registry`: the local registry's `hosts.toml` (containerd, kind)
//! and the KEP-1755 ConfigMap (kind), parsed back and checked.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use oci_cache_core::mirror::MirrorConfig;

use super::tests::{request, with_auth, NODE_BASIC};
use super::*;

fn with_local<'a>(mirrors: &'a MirrorConfig, mirror: &str, local: &str) -> Request<'a> {
    let mut req = request(mirrors, mirror);
    req.local_registry = Some(super::super::LocalRegistry::parse(local).unwrap());
    req
}

/// The generated file at `path`, parsed as TOML.
fn toml_at(files: &[GeneratedFile], path: &str) -> toml::Table {
    let f = files
        .iter()
        .find(|f| f.path == std::path::Path::new(path))
        .unwrap_or_else(|| panic!("no {path} in {files:?}"));
    toml::from_str(&f.contents).unwrap()
}

#[test]
fn kind_gets_the_local_registry_hosts_toml_and_the_kep_1755_configmap() {
    let mirrors = MirrorConfig::common();
    for path_prefix in [false, true] {
        let mut req = with_local(
            &mirrors,
            "http://kind-registry:5000",
            "localhost:5001/local",
        );
        req.path_prefix = path_prefix;
        let files = render(ClientKind::Kind, &req).unwrap();
        let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths[..2],
            ["kind-config.yaml", "local-registry-hosting.yaml"]
        );
        assert_eq!(paths.last().unwrap(), "certs.d/localhost:5001/hosts.toml");
        assert_eq!(files.len(), if path_prefix { 8 } else { 9 }, "{paths:?}");

        let hosts = toml_at(&files, "certs.d/localhost:5001/hosts.toml");
        assert_eq!(hosts["server"].as_str(), Some("http://kind-registry:5000"));
        let host = hosts["host"].as_table().unwrap();
        assert_eq!(host.len(), 1, "{hosts}");
        let mirror = host["http://kind-registry:5000"].as_table().unwrap();
        assert_eq!(
            mirror["capabilities"].as_array().unwrap(),
            &vec![toml::Value::from("pull"), toml::Value::from("resolve")]
        );
        // Hosted repositories are at the mirror's root whatever the
        // upstreams' form: `/v2/local/app`, never `/v2/localhost:5001/…`.
        assert!(mirror.get("override_path").is_none(), "{hosts}");
        assert!(mirror.get("skip_verify").is_none(), "{hosts}");
        let hub = toml_at(&files, "certs.d/docker.io/hosts.toml");
        let hub_host = hub["host"].as_table().unwrap().values().next().unwrap();
        assert_eq!(
            hub_host.get("override_path").and_then(toml::Value::as_bool),
            path_prefix.then_some(true)
        );

        let map: serde_norway::Value = serde_norway::from_str(&files[1].contents).unwrap();
        assert_eq!(map["apiVersion"].as_str(), Some("v1"));
        assert_eq!(map["kind"].as_str(), Some("ConfigMap"));
        assert_eq!(
            map["metadata"]["name"].as_str(),
            Some("local-registry-hosting")
        );
        assert_eq!(map["metadata"]["namespace"].as_str(), Some("kube-public"));
        let v1 = map["data"]["localRegistryHosting.v1"].as_str().unwrap();
        let v1: serde_norway::Value = serde_norway::from_str(v1).unwrap();
        assert_eq!(v1["host"].as_str(), Some("localhost:5001/local"));
        assert_eq!(
            v1["hostFromContainerRuntime"].as_str(),
            Some("localhost:5001/local")
        );
        assert_eq!(
            v1["hostFromClusterNetwork"].as_str(),
            Some("kind-registry:5000/local")
        );
        assert_eq!(
            v1["help"].as_str(),
            Some("https://kind.sigs.k8s.io/docs/user/local-registry/")
        );
        assert_eq!(v1.as_mapping().unwrap().len(), 4, "{v1:?}");
    }
}

#[test]
fn containerd_gets_the_local_registry_hosts_toml_with_the_mirrors_ca_and_auth() {
    let mirrors = MirrorConfig::common();
    let mut req = with_local(&mirrors, "https://mirror.example:8443", "localhost:5001");
    req.ca_file = Some(PathBuf::from("/etc/containerd/certs.d/ca.pem"));
    req.auth = with_auth(&mirrors, "https://mirror.example:8443").auth;
    let files = render(ClientKind::Containerd, &req).unwrap();
    assert_eq!(
        files.len(),
        7,
        "five upstreams, _default and localhost:5001"
    );
    assert!(files.iter().all(|f| f.path.ends_with("hosts.toml")));
    let hosts = toml_at(&files, "localhost:5001/hosts.toml");
    assert_eq!(
        hosts["server"].as_str(),
        Some("https://mirror.example:8443")
    );
    let mirror = &hosts["host"]["https://mirror.example:8443"];
    assert_eq!(
        mirror["ca"].as_str(),
        Some("/etc/containerd/certs.d/ca.pem")
    );
    assert_eq!(
        mirror["header"]["Authorization"].as_array().unwrap(),
        &vec![toml::Value::from(NODE_BASIC)]
    );
}

#[test]
fn a_local_registry_is_refused_where_it_does_not_fit() {
    let mirrors = MirrorConfig::common();
    let req = with_local(&mirrors, "http://10.0.0.5:5000", "localhost:5001/local");
    for kind in [
        ClientKind::Talos,
        ClientKind::Docker,
        ClientKind::Podman,
        ClientKind::Buildkit,
        ClientKind::K3s,
    ] {
        let err = render(kind, &req).unwrap_err();
        assert!(
            err.contains("--local-registry applies to kind and containerd"),
            "{kind:?}: {err}"
        );
    }
    let req = with_local(&mirrors, "http://10.0.0.5:5000", "ghcr.io/local");
    let err = render(ClientKind::Kind, &req).unwrap_err();
    assert!(err.contains("also an upstream's name"), "{err}");
}
