//! The forms beyond the plain files: Talos `skipFallback` and the
//! `talosctl` flags, kind's nodes, and merging into an existing
//! `daemon.json`.

use oci_cache_core::mirror::MirrorConfig;

use super::tests::{one, request};
use super::*;

#[test]
fn talos_skip_fallback_is_set_on_every_entry_of_both_forms() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://10.5.0.1:5000");
    req.skip_fallback = true;
    let docs = one(render(ClientKind::Talos, &req).unwrap()).contents;
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&docs)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 6, "five upstreams and *");
    for doc in &docs {
        assert_eq!(doc["skipFallback"].as_bool(), Some(true), "{doc:?}");
    }
    req.form = Some(Form::MachinePatch);
    let patch = one(render(ClientKind::Talos, &req).unwrap()).contents;
    let patch: serde_norway::Value = serde_norway::from_str(&patch).unwrap();
    let entries = patch["machine"]["registries"]["mirrors"]
        .as_mapping()
        .unwrap();
    assert_eq!(entries.len(), 6);
    for (_, entry) in entries {
        assert_eq!(entry["skipFallback"].as_bool(), Some(true));
    }
    req.form = None;
    let err = render(ClientKind::K3s, &req).unwrap_err();
    assert!(err.contains("--skip-fallback applies to talos"), "{err}");
}

#[test]
fn talosctl_flags_form_is_the_seeds_command_line() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://10.5.0.1:5000");
    req.form = Some(Form::Flags);
    let text = one(render(ClientKind::Talos, &req).unwrap()).contents;
    let command: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        command,
        "talosctl cluster create \\\n    --registry-mirror docker.io=http://10.5.0.1:5000 \\\n    --registry-mirror gcr.io=http://10.5.0.1:5000 \\\n    --registry-mirror ghcr.io=http://10.5.0.1:5000 \\\n    --registry-mirror quay.io=http://10.5.0.1:5000 \\\n    --registry-mirror registry.k8s.io=http://10.5.0.1:5000"
    );
    req.skip_fallback = true;
    let err = render(ClientKind::Talos, &req).unwrap_err();
    assert!(err.contains("no skipFallback"), "{err}");
    req.skip_fallback = false;
    req.path_prefix = true;
    assert!(render(ClientKind::Talos, &req).is_err());
}

#[test]
fn kind_mounts_the_tree_on_every_node_it_declares() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://192.168.1.10:5000");
    req.workers = 2;
    let files = render(ClientKind::Kind, &req).unwrap();
    assert!(files[0].contents.contains("A worker added by hand"));
    let yaml: serde_norway::Value = serde_norway::from_str(&files[0].contents).unwrap();
    let nodes = yaml["nodes"].as_sequence().unwrap();
    let roles: Vec<&str> = nodes.iter().map(|n| n["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    for node in nodes {
        assert_eq!(
            node["extraMounts"][0]["containerPath"].as_str(),
            Some(KIND_CERTS_DIR)
        );
        assert_eq!(
            node["extraMounts"][0]["hostPath"].as_str(),
            Some("./certs.d")
        );
    }
}

#[test]
fn docker_merge_keeps_other_keys_puts_the_mirror_first_and_is_idempotent() {
    let mirrors = MirrorConfig::common();
    let mut req = request(&mirrors, "http://10.0.0.5:5000");
    let existing = serde_json::json!({
        "log-driver": "journald",
        "storage-driver": "overlay2",
        "registry-mirrors": ["https://mirror.gcr.io"],
        "insecure-registries": ["10.0.0.9:5000"],
        "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 64000, "Soft": 64000}}
    });
    req.merge_into = existing.as_object().cloned();
    let merged = one(render(ClientKind::Docker, &req).unwrap()).contents;
    let merged: serde_json::Value = serde_json::from_str(&merged).unwrap();
    assert_eq!(
        merged["registry-mirrors"],
        serde_json::json!(["http://10.0.0.5:5000", "https://mirror.gcr.io"])
    );
    assert_eq!(
        merged["insecure-registries"],
        serde_json::json!(["10.0.0.5:5000", "10.0.0.9:5000"])
    );
    for key in ["log-driver", "storage-driver", "default-ulimits"] {
        assert_eq!(merged[key], existing[key], "{key}");
    }
    // Merging the result again changes nothing.
    req.merge_into = merged.as_object().cloned();
    let again = one(render(ClientKind::Docker, &req).unwrap()).contents;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        merged
    );
    // A key of the wrong type is refused, not overwritten.
    req.merge_into = serde_json::json!({"registry-mirrors": "http://x"})
        .as_object()
        .cloned();
    let err = render(ClientKind::Docker, &req).unwrap_err();
    assert!(err.contains("not a list of strings"), "{err}");
}
