use std::path::Path;

use oci_cache_core::manifest::media_type::DOCKER_MANIFEST;
use oci_cache_core::reference::Repository;
use oci_cache_core::storage::{MemoryStorage, TagKey};

use super::*;

/// Writes `bytes` as a blob of registry:2 storage under `root`.
fn put_blob(root: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let hex = digest.hex();
    let dir = root.join(V2).join("blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data"), bytes).unwrap();
    digest
}

fn put_link(path: &Path, digest: &Digest) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, digest.to_string()).unwrap();
}

/// An image of one config and one layer tagged `tag` in `repo`; returns
/// the manifest's and the layer's digests.
fn put_image(root: &Path, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Digest) {
    let config = format!("{{\"tag\":\"{tag}\"}}");
    let config_digest = put_blob(root, config.as_bytes());
    let layer_digest = put_blob(root, layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
        "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},
        "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{layer_digest}"}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = put_blob(root, manifest.as_bytes());
    let manifests = root
        .join(V2)
        .join("repositories")
        .join(repo)
        .join("_manifests");
    put_link(
        &manifests.join("tags").join(tag).join("current/link"),
        &manifest_digest,
    );
    put_link(
        &manifests
            .join("revisions/sha256")
            .join(manifest_digest.hex())
            .join("link"),
        &manifest_digest,
    );
    (manifest_digest, layer_digest)
}

fn tag_key(repo: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: Registry::docker_hub(),
        repository: Repository::new(repo).unwrap(),
        tag: Tag::new(tag).unwrap(),
    }
}

async fn import(root: &Path, storage: &MemoryStorage) -> ExitCode {
    let mirrors = MirrorConfig::common();
    import_registry2(storage, &mirrors, root, &Registry::docker_hub(), &[])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_corrupt_blob_is_never_imported_and_fails_only_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (good, good_layer) = put_image(root, "library/good", "v1", b"good layer");
    let (bad, bad_layer) = put_image(root, "library/bad", "v1", b"bad layer");
    // Bit rot in the registry's copy of the layer.
    let hex = bad_layer.hex();
    std::fs::write(
        root.join(V2)
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"),
        b"bad layeR",
    )
    .unwrap();

    let storage = MemoryStorage::new();
    assert_eq!(import(root, &storage).await, ExitCode::FAILURE);
    assert!(storage.blob_stat(&good_layer).await.unwrap().is_some());
    assert!(storage.manifest_get(&good).await.unwrap().is_some());
    let tag = storage
        .tag_get(&tag_key("library/good", "v1"))
        .await
        .unwrap();
    assert_eq!(tag.unwrap().digest, good);
    assert!(storage.blob_stat(&bad_layer).await.unwrap().is_none());
    assert!(storage.manifest_get(&bad).await.unwrap().is_none());
    assert!(storage
        .tag_get(&tag_key("library/bad", "v1"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_link_out_of_the_directory_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let (manifest, layer) = put_image(&root, "library/app", "v1", b"secret bytes");
    // The layer's file replaced by a link to a file outside the directory
    // (with the right content: the link itself is what is refused).
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"secret bytes").unwrap();
    let hex = layer.hex();
    let data = root
        .join(V2)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::remove_file(&data).unwrap();
    std::os::unix::fs::symlink(&outside, &data).unwrap();

    let storage = MemoryStorage::new();
    assert_eq!(import(&root, &storage).await, ExitCode::FAILURE);
    assert!(storage.blob_stat(&layer).await.unwrap().is_none());
    assert!(storage.manifest_get(&manifest).await.unwrap().is_none());
}

#[tokio::test]
async fn a_manifest_without_its_layers_is_incomplete_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (manifest, layer) = put_image(root, "library/app", "v1", b"never pulled");
    let hex = layer.hex();
    std::fs::remove_dir_all(root.join(V2).join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    let storage = MemoryStorage::new();
    assert_eq!(import(root, &storage).await, ExitCode::SUCCESS);
    assert!(storage.manifest_get(&manifest).await.unwrap().is_none());
}

#[tokio::test]
async fn a_directory_that_is_not_registry2_storage_says_which_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let mirrors = MirrorConfig::common();
    let e = import_registry2(
        &MemoryStorage::new(),
        &mirrors,
        dir.path(),
        &Registry::docker_hub(),
        &[],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("rootdirectory"), "{e}");
}

fn proxy(url: &str) -> RegistryProxy {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yml");
    std::fs::write(
        &file,
        format!("version: 0.1\nproxy:\n  remoteurl: {url}\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n"),
    )
    .unwrap();
    crate::registry_compat::proxy_of(&file).unwrap()
}

#[test]
fn the_upstream_comes_from_the_flag_the_config_or_the_default() {
    let mirrors = MirrorConfig::common();
    assert_eq!(
        chosen_upstream(&mirrors, &[], None).unwrap(),
        Registry::docker_hub()
    );
    assert_eq!(
        chosen_upstream(&mirrors, &["ghcr.io".to_owned()], None)
            .unwrap()
            .as_str(),
        "ghcr.io"
    );
    let k8s = proxy("https://registry.k8s.io");
    assert_eq!(
        k8s.root_directory.as_deref(),
        Some(Path::new("/var/lib/registry"))
    );
    assert_eq!(
        chosen_upstream(&mirrors, &[], Some(&k8s)).unwrap().as_str(),
        "registry.k8s.io"
    );
    let hub = proxy("https://registry-1.docker.io");
    assert_eq!(
        chosen_upstream(&mirrors, &[], Some(&hub)).unwrap(),
        Registry::docker_hub()
    );
    let e = chosen_upstream(&mirrors, &["ghcr.io".to_owned()], Some(&k8s)).unwrap_err();
    assert!(e.contains("disagree"), "{e}");
}

#[test]
fn an_upstream_that_is_not_configured_is_refused_with_what_to_add() {
    let mirrors = MirrorConfig::common();
    let e =
        chosen_upstream(&mirrors, &[], Some(&proxy("https://registry.example:5000"))).unwrap_err();
    assert!(
        e.contains("upstream registry.example:5000, which is not configured here"),
        "{e}"
    );
    assert!(
        e.contains("--upstream registry.example:5000=https://registry.example:5000"),
        "{e}"
    );
}
