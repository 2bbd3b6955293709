//! Storage backends through the public API: the conformance suite on every
//! backend (S3 against a real server), persistence, hostile names, disk full.

// Tests: failing loudly, and saying so on stderr, is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use oci_cache_core::digest::Digest;
use oci_cache_core::reference::{Registry, Repository, Tag};
use oci_cache_core::storage::conformance::{self, collect, stream_of, unique_bytes};
use oci_cache_core::storage::object_store;
use oci_cache_core::storage::object_store::local::LocalFileSystem;
use oci_cache_core::storage::{
    FsOptions, FsStorage, MemoryStorage, ObjectStorage, Storage, StoredManifest, TagKey, TagRecord,
};

mod s3_env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_conforms() {
    conformance::run_all(&MemoryStorage::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&FsStorage::open(dir.path()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_without_fsync_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let options = FsOptions::default().with_durable(false);
    conformance::run_all(&FsStorage::open_with(dir.path(), options).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_in_memory_conforms() {
    let store = Arc::new(object_store::memory::InMemory::new());
    conformance::run_all(&ObjectStorage::new(store, "under/a/prefix")).await;
}

/// `LocalFileSystem` keeps no Content-Type: manifests get a `.media-type`
/// object beside them, as on `FsStorage`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_local_file_system_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let storage = ObjectStorage::new(store, "");
    conformance::run_all(&storage).await;
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
    let manifest = StoredManifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        bytes,
    };
    storage.manifest_put(&manifest).await.unwrap();
    let hex = manifest.digest.hex();
    let on_disk = dir
        .path()
        .join(format!("manifests/sha256/{}/{hex}", &hex[..2]));
    assert_eq!(std::fs::read(&on_disk).unwrap(), manifest.bytes);
    let sidecar = on_disk.with_extension("media-type");
    assert_eq!(
        std::fs::read_to_string(sidecar).unwrap(),
        manifest.media_type
    );
    // A second storage over the same directory (a restart) reads it back.
    let again = ObjectStorage::new(
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
        "",
    );
    assert_eq!(
        again.manifest_get(&manifest.digest).await.unwrap(),
        Some(manifest)
    );
}

/// `Arc<S>` and `Box<S>` are storages, `dyn` included, and forward everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_and_box_forward() {
    let shared: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    conformance::run_all(&shared).await;
    let dir = tempfile::tempdir().unwrap();
    let boxed: Box<FsStorage> = Box::new(FsStorage::open(dir.path()).await.unwrap());
    conformance::run_all(&boxed).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conforms() {
    let Some(config) = s3_env::s3_config() else {
        return;
    };
    let storage = ObjectStorage::s3(&config).unwrap();
    conformance::run_all(&storage).await;
}

/// Fill leases need conditional writes (issue 24): the S3 server honours
/// `If-None-Match: *` and `If-Match` through `object_store`.
#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_honours_the_conditional_writes_fill_leases_need() {
    use oci_cache_core::fleet::{FleetIdentity, LeaseTimings, Leases};
    let Some(config) = s3_env::s3_config() else {
        return;
    };
    let storage = ObjectStorage::s3(&config).unwrap();
    let identity = FleetIdentity {
        holder_id: "replica-1".to_owned(),
        advertise_url: "http://127.0.0.2:5000".to_owned(),
    };
    let leases = Leases::new(&storage, identity, LeaseTimings::default());
    leases.probe().await.unwrap();
}

#[cfg(not(feature = "s3"))]
#[test]
fn s3_conforms() {
    s3_env::skip_s3("the `s3` feature is off");
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_missing_bucket_is_a_clear_error() {
    let Some(mut config) = s3_env::s3_config() else {
        return;
    };
    config.bucket = "no-such-bucket-oci-cache".to_owned();
    let storage = ObjectStorage::s3(&config).unwrap();
    let err = storage
        .blob_write(
            &Digest::sha256_of(b"x"),
            Some(1),
            stream_of(Bytes::from_static(b"x"), 1),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot upload blob sha256:"),
        "{err}"
    );
}

fn tag_key(upstream: &str, repository: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: Registry::new(upstream).unwrap(),
        repository: Repository::new(repository).unwrap(),
        tag: Tag::new(tag).unwrap(),
    }
}

#[tokio::test]
async fn fs_contents_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let blob = unique_bytes(300_000);
    let blob_digest = Digest::sha256_of(&blob);
    let manifest = StoredManifest {
        digest: Digest::sha256_of(b"{}"),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        bytes: Bytes::from_static(b"{}"),
    };
    let manifest_digest = manifest.digest.to_string();
    let key = tag_key("registry-1.docker.io", "library/alpine", "3.20");
    let record = TagRecord {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        checked_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
    };
    {
        let storage = FsStorage::open(dir.path()).await.unwrap();
        storage
            .blob_write(&blob_digest, None, stream_of(blob.clone(), 65536))
            .await
            .unwrap();
        storage.manifest_put(&manifest).await.unwrap();
        storage.tag_put(&key, &record).await.unwrap();
    }
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let read = storage.blob_read(&blob_digest, None).await.unwrap();
    assert_eq!(collect(read.stream).await.unwrap(), blob);
    assert_eq!(
        storage.manifest_get(&manifest.digest).await.unwrap(),
        Some(manifest)
    );
    assert_eq!(storage.tag_get(&key).await.unwrap(), Some(record));
    // The tag record is plain JSON at a predictable path.
    let json = std::fs::read_to_string(
        dir.path()
            .join("tags/registry-1.docker.io/library/alpine/_tags/3.20"),
    )
    .unwrap();
    assert!(json.contains(manifest_digest.as_str()), "{json}");
}

#[test]
fn traversal_names_do_not_parse() {
    for bad in [
        "..",
        "../etc",
        "a/../../etc",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a\\b",
        "",
    ] {
        assert!(Repository::new(bad).is_err(), "repository {bad:?} parsed");
    }
    for bad in ["..", "../x", "a/b", ".hidden", "-x", "", "x\0"] {
        assert!(Tag::new(bad).is_err(), "tag {bad:?} parsed");
    }
    for bad in ["../x", "a/b", "", "x y"] {
        assert!(Registry::new(bad).is_err(), "registry {bad:?} parsed");
    }
    // Deserialising goes through the same validation.
    assert!(serde_json::from_str::<Repository>("\"../../etc\"").is_err());
    assert!(serde_json::from_str::<Tag>("\"../x\"").is_err());
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Odd but valid names (ports, IPv6 hosts, dots, tags that look like the
/// reserved `_tags`) all land inside the root and round-trip through listing.
#[tokio::test]
async fn odd_valid_names_stay_inside_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let storage = FsStorage::open(&root).await.unwrap();
    let keys = [
        tag_key("localhost:5000", "a/b/c", "latest"),
        tag_key("[::1]:5000", "x", "_tags"),
        tag_key("docker.io", "library/a.b_c-d", "_staging"),
        tag_key("docker.io", "library/x", "v1.0"),
    ];
    let record = TagRecord {
        digest: Digest::sha256_of(b"m"),
        media_type: "application/json".to_owned(),
        checked_at: SystemTime::now(),
    };
    for key in &keys {
        storage.tag_put(key, &record).await.unwrap();
    }
    for key in &keys {
        assert_eq!(storage.tag_get(key).await.unwrap().as_ref(), Some(&record));
        let tags = storage
            .tag_list(&key.upstream, &key.repository)
            .await
            .unwrap();
        assert!(tags.contains(&key.tag), "{key:?} not in {tags:?}");
    }
    let repos = storage.repository_list().await.unwrap();
    assert_eq!(repos.len(), 4, "{repos:?}");
    // Nothing was created next to the root, and everything inside is below it.
    let siblings: Vec<_> = std::fs::read_dir(outer.path()).unwrap().collect();
    assert_eq!(siblings.len(), 1);
    let root = root.canonicalize().unwrap();
    for file in files_under(&root) {
        assert!(file.canonicalize().unwrap().starts_with(&root), "{file:?}");
    }
}

/// A real full filesystem: a 2 MiB tmpfs. Needs root and permission to mount;
/// skipped loudly otherwise (the quota test in `fs.rs` always runs).
#[tokio::test]
async fn fs_disk_full_on_a_tiny_tmpfs() {
    struct Mount(PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED disk-full tmpfs test: mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED disk-full tmpfs test: cannot run mount: {e}");
            return;
        }
    }
    let _mount = Mount(dir.path().to_owned());
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let big = unique_bytes(3 * 1024 * 1024);
    let digest = Digest::sha256_of(&big);
    let err = storage
        .blob_write(&digest, Some(big.len() as u64), stream_of(big, 256 * 1024))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("the disk is full"), "{message}");
    assert!(message.contains(digest.as_str()), "{message}");
    assert!(storage.blob_stat(&digest).await.unwrap().is_none());
    assert!(
        files_under(dir.path()).is_empty(),
        "partial files left: {:?}",
        files_under(dir.path())
    );
    // The space came back: a blob that fits is stored.
    let small = unique_bytes(512 * 1024);
    let small_digest = Digest::sha256_of(&small);
    storage
        .blob_write(&small_digest, None, stream_of(small.clone(), 65536))
        .await
        .unwrap();
    let read = storage.blob_read(&small_digest, None).await.unwrap();
    assert_eq!(collect(read.stream).await.unwrap(), small);
}
