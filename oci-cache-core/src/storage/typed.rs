//! Manifests, tags and the repository list, written once over the record
//! primitives; the provided methods of [`Storage`] call these.

use std::collections::BTreeSet;

use futures::TryStreamExt;

use super::verified::verify_bytes;
use super::{
    Record, RecordKey, RecordPrefix, RecordWrite, RepositoryEntry, Storage, StoredManifest, TagKey,
    TagRecord,
};
use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::{Error, Result};

/// The `backend` of errors about what a record holds, whichever backend stored it.
const RECORDS: &str = "records";

pub(super) async fn manifest_get<S: Storage + ?Sized>(
    storage: &S,
    digest: &Digest,
) -> Result<Option<StoredManifest>> {
    let Some(record) = storage.record_get(&RecordKey::manifest(digest)).await? else {
        return Ok(None);
    };
    let media_type = record.media_type.ok_or_else(|| Error::Storage {
        backend: RECORDS,
        message: format!(
            "manifest {digest} in {storage} was stored without a media type; delete it"
        ),
        source: None,
    })?;
    Ok(Some(StoredManifest {
        digest: digest.clone(),
        media_type,
        bytes: record.bytes,
    }))
}

pub(super) async fn manifest_put<S: Storage + ?Sized>(
    storage: &S,
    manifest: &StoredManifest,
) -> Result<()> {
    verify_bytes(&manifest.digest, &manifest.bytes)?;
    // Content-addressed, so overwriting an existing copy changes nothing.
    let record = Record::new(manifest.bytes.clone()).with_media_type(manifest.media_type.clone());
    storage
        .record_put(
            &RecordKey::manifest(&manifest.digest),
            record,
            RecordWrite::Overwrite,
        )
        .await?;
    Ok(())
}

pub(super) async fn tag_get<S: Storage + ?Sized>(
    storage: &S,
    key: &TagKey,
) -> Result<Option<TagRecord>> {
    let record_key = RecordKey::tag(key);
    let Some(record) = storage.record_get(&record_key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&record.bytes)
        .map(Some)
        .map_err(|e| {
            Error::storage(
                RECORDS,
                format!("tag record {record_key} in {storage} is corrupt; delete it"),
                e,
            )
        })
}

pub(super) async fn tag_put<S: Storage + ?Sized>(
    storage: &S,
    key: &TagKey,
    record: &TagRecord,
) -> Result<()> {
    let json = serde_json::to_vec(record)
        .map_err(|e| Error::storage(RECORDS, "cannot encode tag record", e))?;
    storage
        .record_put(
            &RecordKey::tag(key),
            Record::new(json),
            RecordWrite::Overwrite,
        )
        .await?;
    Ok(())
}

pub(super) async fn tag_list<S: Storage + ?Sized>(
    storage: &S,
    upstream: &Registry,
    repository: &Repository,
) -> Result<Vec<Tag>> {
    let mut tags: Vec<Tag> = storage
        .record_list(&RecordPrefix::tags_of(upstream, repository))
        .try_filter_map(|key| async move {
            Ok(key
                .tag_key()
                .filter(|k| &k.upstream == upstream && &k.repository == repository)
                .map(|k| k.tag))
        })
        .try_collect()
        .await?;
    tags.sort();
    Ok(tags)
}

/// Memory grows with the number of repositories, not of tags: keys are
/// folded into the set as they stream by.
pub(super) async fn repository_list<S: Storage + ?Sized>(
    storage: &S,
) -> Result<Vec<RepositoryEntry>> {
    let repositories = storage
        .record_list(&RecordPrefix::tags())
        .try_fold(BTreeSet::new(), |mut set, key| async move {
            if let Some(key) = key.tag_key() {
                set.insert(RepositoryEntry {
                    upstream: key.upstream,
                    repository: key.repository,
                });
            }
            Ok(set)
        })
        .await?;
    Ok(repositories.into_iter().collect())
}

/// Every manifest a record under [`RecordPrefix::protecting`] links, sorted
/// and deduplicated: the roots of what eviction and purge must keep.
pub async fn protected_manifests<S: Storage + ?Sized>(storage: &S) -> Result<Vec<Digest>> {
    let mut found = BTreeSet::new();
    for prefix in RecordPrefix::protecting() {
        let mut keys = storage.record_list(&prefix);
        while let Some(key) = keys.try_next().await? {
            found.extend(key.protected_manifest());
        }
    }
    Ok(found.into_iter().collect())
}

/// The current time in Unix seconds (0 before the epoch): what grace
/// records and upload sessions store.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every blob a record under [`RecordPrefix::protecting_blobs`] keeps now:
/// its grace has not ended. A record whose body is not a time keeps
/// nothing (it is swept like an ended one).
pub async fn protected_blobs<S: Storage + ?Sized>(storage: &S) -> Result<Vec<Digest>> {
    let now = now_secs();
    let mut found = BTreeSet::new();
    for (digest, until) in blob_graces(storage).await? {
        if until > now {
            found.insert(digest);
        }
    }
    Ok(found.into_iter().collect())
}

/// Each record under [`RecordPrefix::protecting_blobs`] as the blob it
/// names and the end of its grace (0 when the body is not a time).
pub async fn blob_graces<S: Storage + ?Sized>(storage: &S) -> Result<Vec<(Digest, u64)>> {
    let mut found = Vec::new();
    for prefix in RecordPrefix::protecting_blobs() {
        let mut keys = storage.record_list(&prefix);
        while let Some(key) = keys.try_next().await? {
            let Some(digest) = key.protected_blob() else {
                continue;
            };
            let Some(record) = storage.record_get(&key).await? else {
                continue;
            };
            let until = std::str::from_utf8(&record.bytes)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0);
            found.push((digest, until));
        }
    }
    Ok(found)
}
