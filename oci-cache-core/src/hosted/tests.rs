#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::reference::ManifestRef;
use crate::storage::{ByteStream, MemoryStorage, RecordKey};
use crate::PushErrorKind;

fn stream(parts: &[&[u8]]) -> ByteStream {
    let parts: Vec<crate::Result<Bytes>> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    futures::stream::iter(parts).boxed()
}

fn hosted(storage: &Arc<MemoryStorage>) -> Hosted<MemoryStorage> {
    Hosted::new(
        Arc::clone(storage),
        HostedOptions::default().with_piece_size(4),
    )
}

fn repo(name: &str) -> Repository {
    Repository::new(name).unwrap()
}

/// The keys of every stored upload piece.
async fn piece_records(storage: &MemoryStorage) -> Vec<RecordKey> {
    storage
        .record_list(&RecordPrefix::upload_pieces())
        .try_collect()
        .await
        .unwrap()
}

async fn read_blob(storage: &MemoryStorage, digest: &Digest) -> Vec<u8> {
    let read = storage.blob_read(digest, None).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.map(|c| c.unwrap()).collect().await;
    chunks.concat()
}

/// Asserts that `e` is a push refused for `kind`; shows the whole error
/// otherwise.
#[track_caller]
fn assert_push_refused(e: &Error, kind: PushErrorKind) {
    assert!(
        matches!(e, Error::Push { kind: got, .. } if *got == kind),
        "{e:?}"
    );
}

#[tokio::test]
async fn chunked_upload_survives_a_new_instance_and_verifies() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let content = b"hello, hosted world";
    let digest = Digest::sha256_of(content);
    let state = hosted(&storage).start_upload(&app, None).await.unwrap();
    let after = hosted(&storage)
        .append(
            &app,
            &state.id,
            Some((0, 9)),
            stream(&[&content[..5], &content[5..10]]),
        )
        .await
        .unwrap();
    assert_eq!(after.offset, 10);
    // A "restart": a new instance over the same storage sees the session.
    let restarted = hosted(&storage);
    assert_eq!(restarted.upload(&app, &state.id).await.unwrap().offset, 10);
    // A gap is refused and changes nothing.
    let gap = restarted
        .append(&app, &state.id, Some((12, 14)), stream(&[b"xyz"]))
        .await
        .unwrap_err();
    assert_push_refused(&gap, PushErrorKind::OutOfOrder { offset: 10 });
    // Another repository cannot use the id.
    assert!(restarted
        .upload(&repo("local/other"), &state.id)
        .await
        .is_err());
    let size = restarted
        .finish(&app, &state.id, &digest, Some(stream(&[&content[10..]])))
        .await
        .unwrap();
    assert_eq!(size, content.len() as u64);
    assert_eq!(read_blob(&storage, &digest).await, content);
    // The session and its pieces are gone: only the blob remains.
    assert!(restarted.upload(&app, &state.id).await.is_err());
    let blobs: Vec<_> = storage.blob_list().collect().await;
    assert_eq!(blobs.len(), 1);
    assert!(piece_records(&storage).await.is_empty());
}

#[tokio::test]
async fn wrong_digest_leaves_nothing_visible() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = hosted(&storage);
    let state = h.start_upload(&app, None).await.unwrap();
    h.append(&app, &state.id, None, stream(&[b"some bytes here"]))
        .await
        .unwrap();
    let claimed = Digest::sha256_of(b"other");
    let e = h.finish(&app, &state.id, &claimed, None).await.unwrap_err();
    assert_push_refused(&e, PushErrorKind::DigestInvalid);
    assert!(storage.blob_stat(&claimed).await.unwrap().is_none());
    assert_eq!(storage.blob_list().count().await, 0);
    let e = h
        .put_blob(&claimed, stream(&[b"not it"]))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::DigestInvalid);
    assert!(storage.blob_stat(&claimed).await.unwrap().is_none());
}

/// Knowing a digest the mirror holds is not owning its bytes: an upload
/// that claims a held digest with other bytes is refused, in one piece and
/// in a session, and the held blob stays as it was.
#[tokio::test]
async fn wrong_bytes_for_a_held_digest_are_refused() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = hosted(&storage);
    let held = b"the mirror already holds these bytes";
    let digest = Digest::sha256_of(held);
    h.put_blob(&digest, stream(&[held])).await.unwrap();

    let e = h
        .put_blob(&digest, stream(&[b"guessing the digest"]))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::DigestInvalid);
    let state = h.start_upload(&app, None).await.unwrap();
    h.append(&app, &state.id, None, stream(&[b"guessing"]))
        .await
        .unwrap();
    let e = h
        .finish(&app, &state.id, &digest, Some(stream(&[b" again"])))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::DigestInvalid);
    let state = h.start_upload(&app, None).await.unwrap();
    let e = h.finish(&app, &state.id, &digest, None).await.unwrap_err();
    assert_push_refused(&e, PushErrorKind::DigestInvalid);
    assert_eq!(read_blob(&storage, &digest).await, held);
}

#[tokio::test]
async fn manifests_are_checked_linked_tagged_and_deleted() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = hosted(&storage);
    let config = b"{}";
    let config_digest = Digest::sha256_of(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[]}}"#
    );
    let tag = ManifestRef::Tag(Tag::new("v1").unwrap());
    let e = h
        .put_manifest(&app, &tag, None, Bytes::from(manifest.clone()))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::ManifestBlobUnknown);
    h.put_blob(&config_digest, stream(&[config])).await.unwrap();
    let pushed = h
        .put_manifest(&app, &tag, None, Bytes::from(manifest.clone()))
        .await
        .unwrap();
    assert_eq!(pushed.digest, Digest::sha256_of(manifest.as_bytes()));
    assert_eq!(
        h.manifest(&app, &tag).await.unwrap().bytes,
        manifest.as_bytes()
    );
    assert_eq!(h.tags(&app).await.unwrap(), vec![Tag::new("v1").unwrap()]);
    assert_eq!(h.repositories(None, None).await.unwrap(), vec![app.clone()]);
    assert_eq!(
        protected_manifests(&*storage).await.unwrap(),
        vec![pushed.digest.clone()]
    );
    // Not linked from another repository.
    let by_digest = ManifestRef::Digest(pushed.digest.clone());
    assert!(h
        .manifest(&repo("local/other"), &by_digest)
        .await
        .unwrap_err()
        .is_not_found());
    h.delete(&app, &by_digest).await.unwrap();
    assert!(h.manifest(&app, &tag).await.unwrap_err().is_not_found());
    assert!(protected_manifests(&*storage).await.unwrap().is_empty());
}

#[tokio::test]
async fn abandoned_uploads_are_removed_with_their_pieces() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = Hosted::new(
        Arc::clone(&storage),
        HostedOptions::default()
            .with_piece_size(4)
            .with_upload_max_age(Duration::ZERO),
    );
    let state = h.start_upload(&app, None).await.unwrap();
    h.append(&app, &state.id, None, stream(&[b"0123456789"]))
        .await
        .unwrap();
    // Three pieces of at most 4 bytes, none of them a blob.
    assert_eq!(piece_records(&storage).await.len(), 3);
    assert_eq!(storage.blob_list().count().await, 0);
    assert_eq!(h.cleanup_abandoned().await.unwrap(), 1);
    assert!(piece_records(&storage).await.is_empty());
    // A piece whose session is gone (a crash between the two) goes too.
    let stray = RecordKey::upload_piece(&UploadId::random(), 0);
    storage
        .record_put(
            &stray,
            crate::storage::Record::new(&b"left"[..]),
            crate::storage::RecordWrite::Create,
        )
        .await
        .unwrap();
    assert_eq!(h.cleanup_abandoned().await.unwrap(), 0);
    assert!(piece_records(&storage).await.is_empty());
    assert!(h.upload(&app, &state.id).await.is_err());
}

#[test]
fn local_prefixes_are_one_component_that_no_upstream_claims() {
    let upstreams = MirrorConfig::common();
    assert!(validate_local_prefix("local", &upstreams).is_ok());
    for bad in ["", "a/b", "UP", "docker.io", "ghcr.io"] {
        let e = validate_local_prefix(bad, &upstreams).unwrap_err();
        assert!(e.to_string().contains(bad), "{bad}: {e}");
    }
}

#[tokio::test]
async fn a_second_writer_of_one_upload_is_refused_while_the_first_runs() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = hosted(&storage);
    let state = h.start_upload(&app, None).await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<crate::Result<Bytes>>();
    tx.unbounded_send(Ok(Bytes::from_static(b"first"))).unwrap();
    let slow = {
        let h = h.clone();
        let app = app.clone();
        let id = state.id.clone();
        tokio::spawn(async move { h.append(&app, &id, None, rx.boxed()).await })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = h
        .append(&app, &state.id, None, stream(&[b"second"]))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::UploadInvalid);
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().offset, 5);
    // Once the first is done, the next chunk goes in.
    let after = h
        .append(&app, &state.id, None, stream(&[b"second"]))
        .await
        .unwrap();
    assert_eq!(after.offset, 11);
}

/// Two pushes of one layer cut identical pieces; before, the first to finish
/// deleted the pieces it had written, and the second failed with "a stored
/// piece of the upload is gone".
#[tokio::test]
async fn two_concurrent_uploads_of_one_layer_both_finish() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let content = b"identical layer bytes";
    let digest = Digest::sha256_of(content);
    let engine = hosted(&storage);
    let first = engine.start_upload(&app, None).await.unwrap();
    let second = engine.start_upload(&app, None).await.unwrap();
    for id in [&first.id, &second.id] {
        engine
            .append(&app, id, None, stream(&[content]))
            .await
            .unwrap();
    }
    engine.finish(&app, &first.id, &digest, None).await.unwrap();
    let size = engine
        .finish(&app, &second.id, &digest, None)
        .await
        .unwrap();
    assert_eq!(size, content.len() as u64);
    assert_eq!(read_blob(&storage, &digest).await, content);
    // Both sessions are gone, with their pieces.
    assert!(piece_records(&storage).await.is_empty());
    assert_eq!(storage.blob_list().count().await, 1);
}

/// Pushed blobs count against the cache's size cap as they are stored; the
/// pieces of an open upload are not blobs (the upload caps bound them).
#[tokio::test]
async fn pushes_report_what_they_store_to_the_disk_budget() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(crate::evict::DiskBudget::new(Some(1000)));
    let h = hosted(&storage).with_budget(Arc::clone(&budget));
    let app = repo("local/app");
    let whole = vec![7u8; 100];
    h.put_blob(&Digest::sha256_of(&whole), stream(&[&whole]))
        .await
        .unwrap();
    assert_eq!(budget.stored(), 100);
    let content = b"0123456789";
    let state = h.start_upload(&app, None).await.unwrap();
    h.append(&app, &state.id, None, stream(&[content]))
        .await
        .unwrap();
    assert_eq!(budget.stored(), 100);
    h.finish(&app, &state.id, &Digest::sha256_of(content), None)
        .await
        .unwrap();
    assert_eq!(budget.stored(), 110);
}

/// Pushes an empty config blob and an image manifest of it to `repository`
/// by digest; `extra` is spliced into the manifest's JSON (`"subject":…`).
async fn push_image(
    h: &Hosted<MemoryStorage>,
    repository: &Repository,
    config_type: &str,
    extra: &str,
) -> (Digest, usize) {
    let config = b"{}";
    let config_digest = Digest::sha256_of(config);
    h.put_blob(&config_digest, stream(&[config])).await.unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{config_type}","digest":"{config_digest}","size":2}},"layers":[]{extra}}}"#
    );
    let digest = Digest::sha256_of(manifest.as_bytes());
    h.put_manifest(
        repository,
        &ManifestRef::Digest(digest.clone()),
        None,
        Bytes::from(manifest.clone()),
    )
    .await
    .unwrap();
    (digest, manifest.len())
}

#[tokio::test]
async fn referrers_are_listed_filtered_and_removed_with_their_manifest() {
    const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const SBOM: &str = "application/vnd.example.sbom";
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = hosted(&storage);
    let (image, image_size) = push_image(&h, &app, IMAGE_CONFIG, "").await;
    let subject = format!(
        r#","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{image}","size":{image_size}}}"#
    );
    // An artifact with its own artifactType and annotations, and one whose
    // type comes from its config media type.
    let (sbom, sbom_size) = push_image(
        &h,
        &app,
        "application/vnd.oci.empty.v1+json",
        &format!(
            r#","artifactType":"{SBOM}","annotations":{{"org.example.kind":"sbom"}}{subject}"#
        ),
    )
    .await;
    let (signature, _) = push_image(&h, &app, "application/vnd.example.signature", &subject).await;

    let all = h.referrers(&app, &image, None).await.unwrap();
    let mut expected = vec![sbom.clone(), signature.clone()];
    expected.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(
        all.iter().map(|r| r.digest.clone()).collect::<Vec<_>>(),
        expected
    );
    let sbom_entry = all.iter().find(|r| r.digest == sbom).unwrap();
    assert_eq!(
        sbom_entry,
        &Referrer {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            digest: sbom.clone(),
            size: sbom_size as u64,
            artifact_type: Some(SBOM.to_owned()),
            annotations: [("org.example.kind".to_owned(), "sbom".to_owned())].into(),
        }
    );
    let signature_entry = all.iter().find(|r| r.digest == signature).unwrap();
    assert_eq!(
        signature_entry.artifact_type.as_deref(),
        Some("application/vnd.example.signature")
    );
    assert!(signature_entry.annotations.is_empty());

    let filtered = h.referrers(&app, &image, Some(SBOM)).await.unwrap();
    assert_eq!(filtered, vec![sbom_entry.clone()]);
    assert!(h
        .referrers(&app, &image, Some("application/x-none"))
        .await
        .unwrap()
        .is_empty());
    // Scoped to the repository, and empty (not an error) for unknown subjects.
    assert!(h
        .referrers(&repo("local/other"), &image, None)
        .await
        .unwrap()
        .is_empty());
    assert!(h
        .referrers(&app, &Digest::sha256_of(b"unknown"), None)
        .await
        .unwrap()
        .is_empty());
    // The image itself has no subject: nothing refers to the artifacts.
    assert!(h.referrers(&app, &sbom, None).await.unwrap().is_empty());

    h.delete(&app, &ManifestRef::Digest(sbom.clone()))
        .await
        .unwrap();
    let left = h.referrers(&app, &image, None).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.digest.clone()).collect::<Vec<_>>(),
        vec![signature.clone()]
    );
    // Deleting the subject leaves its referrers listed (the spec allows
    // referrers of a missing subject); deleting the last referrer empties it.
    h.delete(&app, &ManifestRef::Digest(image.clone()))
        .await
        .unwrap();
    assert_eq!(h.referrers(&app, &image, None).await.unwrap().len(), 1);
    h.delete(&app, &ManifestRef::Digest(signature))
        .await
        .unwrap();
    assert!(h.referrers(&app, &image, None).await.unwrap().is_empty());
    assert!(storage
        .record_list(&RecordPrefix::hosted())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .is_empty());
}

/// Pushes `layer` (with an empty config) and an image manifest naming it to
/// `repository` under `tag`, as a second client would while another
/// upload of the same layer is open.
async fn push_image_with_layer(
    h: &Hosted<MemoryStorage>,
    repository: &Repository,
    tag: &str,
    layer: &[u8],
) -> Digest {
    let config = b"{}";
    let config_digest = Digest::sha256_of(config);
    let layer_digest = Digest::sha256_of(layer);
    h.put_blob(&config_digest, stream(&[config])).await.unwrap();
    if h.mount(&layer_digest).await.unwrap().is_none() {
        h.put_blob(&layer_digest, stream(&[layer])).await.unwrap();
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        layer.len()
    );
    h.put_manifest(
        repository,
        &ManifestRef::Tag(Tag::new(tag).unwrap()),
        None,
        Bytes::from(manifest.clone()),
    )
    .await
    .unwrap()
    .digest
}

/// Two CI jobs push images sharing a small layer; one dies after its
/// `PATCH` and its upload is cancelled (or expires). Before, the dying
/// upload's piece was the layer blob itself, the other job mounted it, and
/// the cancel deleted it: the other image lost its layer for good.
#[tokio::test]
async fn a_cancelled_or_expired_upload_never_removes_a_layer_another_push_uses() {
    let layer = b"tiny";
    let layer_digest = Digest::sha256_of(layer);
    for expire in [false, true] {
        let storage = Arc::new(MemoryStorage::new());
        let age = if expire {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        };
        let h = Hosted::new(
            Arc::clone(&storage),
            HostedOptions::default().with_upload_max_age(age),
        );
        let dying = h.start_upload(&repo("local/a"), None).await.unwrap();
        h.append(&repo("local/a"), &dying.id, None, stream(&[layer]))
            .await
            .unwrap();
        // An unfinished upload's bytes are not a blob anyone can mount.
        assert_eq!(h.mount(&layer_digest).await.unwrap(), None);
        let b = repo("local/b");
        let pushed = push_image_with_layer(&h, &b, "v1", layer).await;
        if expire {
            assert_eq!(h.cleanup_abandoned().await.unwrap(), 1);
        } else {
            h.cancel(&repo("local/a"), &dying.id).await.unwrap();
        }
        assert_eq!(
            read_blob(&storage, &layer_digest).await,
            layer,
            "expire: {expire}"
        );
        let pulled = h
            .manifest(&b, &ManifestRef::Tag(Tag::new("v1").unwrap()))
            .await
            .unwrap();
        assert_eq!(pulled.digest, pushed);
        // Nothing of the dying upload is left.
        assert!(piece_records(&storage).await.is_empty());
    }
}

/// An anonymous pusher cannot hold more than its share of sessions, nor
/// make open sessions hold more than the byte cap; what ends a session
/// (finish, cancel, expiry) gives its share back.
#[tokio::test]
async fn open_uploads_are_capped_per_client_and_in_total_bytes() {
    let storage = Arc::new(MemoryStorage::new());
    let app = repo("local/app");
    let h = Hosted::new(
        Arc::clone(&storage),
        HostedOptions::default()
            .with_piece_size(4)
            .with_max_uploads_per_client(2)
            .with_max_upload_bytes(Some(10)),
    );
    let pusher = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    let other = Some(std::net::IpAddr::from([192, 0, 2, 2]));
    let first = h.start_upload(&app, pusher).await.unwrap();
    let second = h.start_upload(&app, pusher).await.unwrap();
    let e = h.start_upload(&app, pusher).await.unwrap_err();
    assert_push_refused(&e, PushErrorKind::TooManyUploads);
    assert!(e.to_string().contains("max_uploads_per_client = 2"), "{e}");
    // Another client is not affected; a cancelled session frees a slot.
    let third = h.start_upload(&app, other).await.unwrap();
    h.cancel(&app, &second.id).await.unwrap();
    let second = h.start_upload(&app, pusher).await.unwrap();

    h.append(&app, &first.id, None, stream(&[b"12345678"]))
        .await
        .unwrap();
    let e = h
        .append(&app, &third.id, None, stream(&[b"abcdef"]))
        .await
        .unwrap_err();
    assert_push_refused(&e, PushErrorKind::TooManyUploads);
    assert!(e.to_string().contains("max_upload_bytes"), "{e}");
    // Nothing of the refused chunk was stored; once the first push is done it fits.
    assert_eq!(h.upload(&app, &third.id).await.unwrap().offset, 0);
    h.finish(&app, &first.id, &Digest::sha256_of(b"12345678"), None)
        .await
        .unwrap();
    let resumed = h
        .append(&app, &second.id, None, stream(&[b"abcdef"]))
        .await
        .unwrap();
    assert_eq!(resumed.offset, 6);
}

/// A memory storage that tracks the bytes it holds (records, blobs, and a
/// blob write's bytes as they stream in) and the most it ever held.
#[derive(Debug, Default)]
struct PeakStorage {
    inner: MemoryStorage,
    held: Arc<std::sync::atomic::AtomicU64>,
    peak: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Display for PeakStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("peak-measuring memory")
    }
}

impl PeakStorage {
    fn add(held: &std::sync::atomic::AtomicU64, peak: &std::sync::atomic::AtomicU64, n: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = held.fetch_add(n, SeqCst) + n;
        peak.fetch_max(now, SeqCst);
    }

    fn sub(&self, n: u64) {
        self.held.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Storage for PeakStorage {
    async fn blob_stat(&self, digest: &Digest) -> crate::Result<Option<crate::storage::BlobInfo>> {
        self.inner.blob_stat(digest).await
    }

    async fn blob_read(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> crate::Result<crate::storage::BlobRead> {
        self.inner.blob_read(digest, range).await
    }

    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: crate::storage::BlobSource,
    ) -> crate::Result<u64> {
        let crate::storage::BlobSource::Unchecked(stream) = data else {
            unreachable!("pushes write unchecked streams")
        };
        let existed = self.inner.blob_stat(digest).await?.is_some();
        let (held, peak) = (Arc::clone(&self.held), Arc::clone(&self.peak));
        let streamed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&streamed);
        let stream = stream
            .inspect_ok(move |chunk| {
                counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
                PeakStorage::add(&held, &peak, chunk.len() as u64);
            })
            .boxed();
        let result = self.inner.blob_write(digest, expected_size, stream).await;
        if result.is_err() || existed {
            self.sub(streamed.load(std::sync::atomic::Ordering::SeqCst));
        }
        result
    }

    async fn blob_delete(&self, digest: &Digest) -> crate::Result<()> {
        if let Some(info) = self.inner.blob_stat(digest).await? {
            self.sub(info.size);
        }
        self.inner.blob_delete(digest).await
    }

    fn blob_list(&self) -> futures::stream::BoxStream<'_, crate::Result<crate::storage::BlobInfo>> {
        self.inner.blob_list()
    }

    async fn record_get(&self, key: &RecordKey) -> crate::Result<Option<crate::storage::Record>> {
        self.inner.record_get(key).await
    }

    async fn record_put(
        &self,
        key: &RecordKey,
        record: crate::storage::Record,
        mode: crate::storage::RecordWrite,
    ) -> crate::Result<bool> {
        let old = self
            .inner
            .record_get(key)
            .await?
            .map_or(0, |r| r.bytes.len() as u64);
        let new = record.bytes.len() as u64;
        let written = self.inner.record_put(key, record, mode).await?;
        if written {
            PeakStorage::add(&self.held, &self.peak, new);
            self.sub(old);
        }
        Ok(written)
    }

    async fn record_delete(&self, key: &RecordKey) -> crate::Result<()> {
        if let Some(old) = self.inner.record_get(key).await? {
            self.sub(old.bytes.len() as u64);
        }
        self.inner.record_delete(key).await
    }

    fn record_list(
        &self,
        prefix: &RecordPrefix,
    ) -> futures::stream::BoxStream<'_, crate::Result<RecordKey>> {
        self.inner.record_list(prefix)
    }
}

/// A blob pushed with `PATCH` then `PUT`, or with a `PUT` body of unknown
/// length, is on disk once: before, its pieces were blobs that stayed
/// until the final blob had been written from them (twice its size), and
/// a `PUT` body was first stored as pieces too.
#[tokio::test]
async fn a_pushed_blob_takes_one_copy_of_disk_not_two() {
    let content = vec![42u8; 64 * 1024];
    let digest = Digest::sha256_of(&content);
    let app = repo("local/app");
    let piece = 4 * 1024_u64;
    for via_put_body in [false, true] {
        let storage = Arc::new(PeakStorage::default());
        let h = Hosted::new(
            Arc::clone(&storage),
            HostedOptions::default().with_piece_size(piece as usize),
        );
        let state = h.start_upload(&app, None).await.unwrap();
        let chunks: Vec<&[u8]> = content.chunks(1000).collect();
        if via_put_body {
            h.finish(&app, &state.id, &digest, Some(stream(&chunks)))
                .await
                .unwrap();
        } else {
            h.append(&app, &state.id, None, stream(&chunks))
                .await
                .unwrap();
            h.finish(&app, &state.id, &digest, None).await.unwrap();
        }
        let size = content.len() as u64;
        // The session record is a few dozen bytes; one piece may overlap.
        let peak = storage.peak();
        assert!(
            peak <= size + piece + 4096,
            "put body: {via_put_body}: {peak} bytes held at the peak for a {size}-byte blob"
        );
        assert_eq!(
            storage.blob_stat(&digest).await.unwrap().unwrap().size,
            size
        );
    }
}
