//! Record checks: manifests, tags and the record primitives beneath them.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::storage::{
    Record, RecordKey, RecordPrefix, RecordWrite, RepositoryEntry, Storage, StoredManifest, TagKey,
    TagRecord,
};
use crate::Error;

fn manifest(media_type: &str) -> StoredManifest {
    let bytes = Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{media_type}\",\"nonce\":\"{}\"}}",
        uuid::Uuid::new_v4()
    ));
    StoredManifest {
        digest: Digest::sha256_of(&bytes),
        media_type: media_type.to_owned(),
        bytes,
    }
}

/// Manifests keep their exact bytes and media type; delete removes them.
pub async fn manifest_round_trip_and_delete(storage: &dyn Storage) {
    let index = manifest("application/vnd.oci.image.index.v1+json");
    let docker = manifest("application/vnd.docker.distribution.manifest.v2+json");
    for m in [&index, &docker] {
        storage.manifest_put(m).await.unwrap();
        // Idempotent.
        storage.manifest_put(m).await.unwrap();
    }
    for m in [&index, &docker] {
        let got = storage.manifest_get(&m.digest).await.unwrap();
        assert_eq!(got.as_ref(), Some(m), "{storage}: manifest round trip");
    }
    storage.manifest_delete(&index.digest).await.unwrap();
    assert_eq!(storage.manifest_get(&index.digest).await.unwrap(), None);
    storage.manifest_delete(&index.digest).await.unwrap();
    assert!(storage
        .manifest_get(&docker.digest)
        .await
        .unwrap()
        .is_some());
    storage.manifest_delete(&docker.digest).await.unwrap();
    // A manifest and a blob with the same digest are different objects.
    let m = manifest("application/vnd.oci.image.manifest.v1+json");
    storage.manifest_put(&m).await.unwrap();
    assert!(storage.blob_stat(&m.digest).await.unwrap().is_none());
    storage.manifest_delete(&m.digest).await.unwrap();
}

/// A manifest whose bytes do not hash to its digest is not stored.
pub async fn manifest_digest_mismatch_is_rejected(storage: &dyn Storage) {
    let mut m = manifest("application/vnd.oci.image.manifest.v1+json");
    m.digest = Digest::sha256_of(b"something else");
    let err = storage.manifest_put(&m).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. }),
        "{storage}: got {err}"
    );
    assert_eq!(storage.manifest_get(&m.digest).await.unwrap(), None);
}

/// Tag records per (upstream, repository, tag): put, replace, list, delete.
pub async fn tags_round_trip_list_and_delete(storage: &dyn Storage) {
    let upstream = Registry::new(&format!(
        "conformance-{}.example:5000",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap();
    let other = Registry::new("other.example").unwrap();
    let alpine = Repository::new("library/alpine").unwrap();
    let deep = Repository::new("team/sub/group/app").unwrap();
    let key = |repository: &Repository, tag: &str| TagKey {
        upstream: upstream.clone(),
        repository: repository.clone(),
        tag: Tag::new(tag).unwrap(),
    };
    let record = |n: u8| TagRecord {
        digest: Digest::sha256_of(&[n]),
        media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
        checked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123 + n as u64),
    };

    assert_eq!(storage.tag_get(&key(&alpine, "3.20")).await.unwrap(), None);
    for (tag, n) in [("3.20", 1), ("latest", 2), ("3.19", 3), ("Edge_1.x-y", 4)] {
        storage
            .tag_put(&key(&alpine, tag), &record(n))
            .await
            .unwrap();
    }
    storage
        .tag_put(&key(&deep, "v1"), &record(5))
        .await
        .unwrap();
    // Replace.
    storage
        .tag_put(&key(&alpine, "latest"), &record(6))
        .await
        .unwrap();
    assert_eq!(
        storage.tag_get(&key(&alpine, "latest")).await.unwrap(),
        Some(record(6))
    );
    // The same repository and tag under another upstream is a different record.
    let elsewhere = TagKey {
        upstream: other.clone(),
        ..key(&alpine, "latest")
    };
    assert_ne!(storage.tag_get(&elsewhere).await.unwrap(), Some(record(6)));

    let tags: Vec<String> = storage
        .tag_list(&upstream, &alpine)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tags, ["3.19", "3.20", "Edge_1.x-y", "latest"]);
    assert_eq!(
        storage.tag_list(&upstream, &deep).await.unwrap(),
        [Tag::new("v1").unwrap()]
    );
    assert!(storage
        .tag_list(&upstream, &Repository::new("library/none").unwrap())
        .await
        .unwrap()
        .is_empty());

    let repos: Vec<RepositoryEntry> = storage
        .repository_list()
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.upstream == upstream)
        .collect();
    let expected: Vec<RepositoryEntry> = [&alpine, &deep]
        .into_iter()
        .map(|repository| RepositoryEntry {
            upstream: upstream.clone(),
            repository: repository.clone(),
        })
        .collect();
    assert_eq!(repos, expected, "{storage}: repository_list");
    let all = storage.repository_list().await.unwrap();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{storage}: repository_list must be sorted");

    for tag in ["3.20", "latest", "3.19", "Edge_1.x-y"] {
        storage.tag_delete(&key(&alpine, tag)).await.unwrap();
    }
    storage.tag_delete(&key(&alpine, "latest")).await.unwrap();
    assert!(storage
        .tag_list(&upstream, &alpine)
        .await
        .unwrap()
        .is_empty());
    storage.tag_delete(&key(&deep, "v1")).await.unwrap();
    assert!(storage
        .repository_list()
        .await
        .unwrap()
        .iter()
        .all(|entry| entry.upstream != upstream));
}

fn random_upstream() -> Registry {
    Registry::new(&format!(
        "records-{}.example",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap()
}

/// Create-if-absent writes once, whoever races for it; overwrite replaces;
/// a record carries its media type.
pub async fn records_create_only_if_absent(storage: &dyn Storage) {
    let key = RecordKey::tag(&TagKey {
        upstream: random_upstream(),
        repository: Repository::new("lease").unwrap(),
        tag: Tag::new("holder").unwrap(),
    });
    let put = |bytes: &'static [u8], mode| storage.record_put(&key, Record::new(bytes), mode);
    assert!(put(b"one", RecordWrite::Create).await.unwrap());
    assert!(
        !put(b"two", RecordWrite::Create).await.unwrap(),
        "{storage}: create over an existing record must not write"
    );
    let got = storage.record_get(&key).await.unwrap().expect("record");
    assert_eq!(got.bytes, Bytes::from_static(b"one"), "{storage}");
    assert!(put(b"three", RecordWrite::Overwrite).await.unwrap());
    let got = storage.record_get(&key).await.unwrap().expect("record");
    assert_eq!(got.bytes, Bytes::from_static(b"three"), "{storage}");
    storage.record_delete(&key).await.unwrap();
    assert_eq!(storage.record_get(&key).await.unwrap(), None);

    // Racing creators: exactly one wins, and its bytes are what is stored.
    let racers = (0..4u8).map(|i| {
        let key = &key;
        async move {
            let won = storage
                .record_put(key, Record::new(vec![i]), RecordWrite::Create)
                .await
                .unwrap();
            (i, won)
        }
    });
    let results = futures::future::join_all(racers).await;
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{storage}: winners of one create: {winners:?}"
    );
    let got = storage.record_get(&key).await.unwrap().expect("record");
    assert_eq!(&got.bytes[..], &winners[..], "{storage}");
    storage.record_delete(&key).await.unwrap();

    // With a media type (a manifest record), created once.
    let bytes = unique_manifest_bytes();
    let key = RecordKey::manifest(&Digest::sha256_of(&bytes));
    let record =
        Record::new(bytes.clone()).with_media_type("application/vnd.oci.image.index.v1+json");
    assert!(storage
        .record_put(&key, record.clone(), RecordWrite::Create)
        .await
        .unwrap());
    let other = Record::new(bytes).with_media_type("text/plain");
    assert!(!storage
        .record_put(&key, other, RecordWrite::Create)
        .await
        .unwrap());
    assert_eq!(
        storage.record_get(&key).await.unwrap(),
        Some(record),
        "{storage}"
    );
    storage.record_delete(&key).await.unwrap();
    assert_eq!(storage.record_get(&key).await.unwrap(), None);
}

fn unique_manifest_bytes() -> Bytes {
    Bytes::from(format!("{{\"nonce\":\"{}\"}}", uuid::Uuid::new_v4()))
}

/// Listing by prefix covers whole segments, skips nested repositories and
/// never shows a media-type sidecar; a tag named like one is a tag.
pub async fn records_list_by_prefix(storage: &dyn Storage) {
    let upstream = random_upstream();
    let app = Repository::new("team/app").unwrap();
    let nested = Repository::new("team/app/sub").unwrap();
    let key = |repository: &Repository, tag: &str| TagKey {
        upstream: upstream.clone(),
        repository: repository.clone(),
        tag: Tag::new(tag).unwrap(),
    };
    let record = |n: u8| TagRecord {
        digest: Digest::sha256_of(&[n]),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let tags = [
        key(&app, "v1"),
        key(&app, "v1.media-type"),
        key(&nested, "x"),
    ];
    for (n, k) in (0u8..).zip(&tags) {
        storage.tag_put(k, &record(n)).await.unwrap();
    }
    let manifest = manifest("application/vnd.oci.image.manifest.v1+json");
    storage.manifest_put(&manifest).await.unwrap();

    let list = |prefix: RecordPrefix| async move {
        let mut keys: Vec<RecordKey> = storage
            .record_list(&prefix)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{storage}: listing {prefix}: {e}"));
        keys.sort();
        keys
    };
    let mut expected = vec![RecordKey::tag(&tags[0]), RecordKey::tag(&tags[1])];
    expected.sort();
    assert_eq!(
        list(RecordPrefix::tags_of(&upstream, &app)).await,
        expected,
        "{storage}"
    );
    assert_eq!(
        list(RecordPrefix::tags_of(&upstream, &nested)).await,
        [RecordKey::tag(&tags[2])],
        "{storage}"
    );
    let manifests = list(RecordPrefix::manifests()).await;
    assert!(
        manifests.contains(&RecordKey::manifest(&manifest.digest)),
        "{storage}: manifest not listed"
    );
    assert!(
        manifests.iter().all(|k| k.manifest_digest().is_some()),
        "{storage}: non-manifest keys listed as manifests: {manifests:?}"
    );
    // A listing can be dropped part way.
    let mut stream = storage.record_list(&RecordPrefix::tags());
    assert!(stream.next().await.is_some(), "{storage}: no tags listed");
    drop(stream);

    // The tag that looks like a sidecar is independent of its namesake.
    assert_eq!(storage.tag_get(&tags[1]).await.unwrap(), Some(record(1)));
    storage.tag_delete(&tags[0]).await.unwrap();
    assert_eq!(
        storage.tag_get(&tags[1]).await.unwrap(),
        Some(record(1)),
        "{storage}"
    );
    for k in &tags {
        storage.tag_delete(k).await.unwrap();
    }
    storage.manifest_delete(&manifest.digest).await.unwrap();
    assert!(list(RecordPrefix::tags_of(&upstream, &app))
        .await
        .is_empty());
}
