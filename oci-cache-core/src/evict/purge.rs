//! Purge: drop one image so that its next pull is a miss.

use std::collections::HashSet;

use futures::StreamExt;
use tracing::{info, warn};

use super::pass::reachable;
use super::DiskBudget;
use crate::digest::Digest;
use crate::error::ErrorChain;
use crate::manifest::Manifest;
use crate::mirror::MirrorConfig;
use crate::observe::{EvictionEvent, Observer};
use crate::reference::{Reference, Tag};
use crate::storage::{RecordPrefix, Storage, TagKey};
use crate::{Error, Result};

/// `reference` as the cache records it: routed to its configured upstream
/// (an alias or a Harbor-style `registry/…` path resolves as a pull does),
/// the repository as that upstream names it, `:latest` when neither tag nor
/// digest is given.
pub fn purge_target(mirrors: &MirrorConfig, reference: &Reference) -> Result<Reference> {
    let registry = reference.registry();
    let upstream = mirrors
        .lookup(registry.as_str())
        .ok_or_else(|| Error::UnknownUpstream {
            name: registry.to_string(),
        })?;
    let repository = upstream.upstream_repository(reference.repository())?;
    let tag = match reference.digest() {
        Some(_) => None,
        None => Some(reference.tag().cloned().unwrap_or_else(Tag::latest)),
    };
    Ok(Reference::from_parts(
        upstream.name.clone(),
        repository,
        tag,
        reference.digest().cloned(),
    ))
}

/// What [`purge`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Tag records removed.
    pub tags: u64,
    /// Manifests removed (an index and its platforms' manifests).
    pub manifests: u64,
    /// Blobs removed.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Blobs kept because a client or fill held them (a later `gc` removes them).
    pub busy: u64,
}

/// Removes each image of `targets`: its tag record (by tag; by digest every
/// tag of the repository that points at it), its manifests unless another
/// tag record or a hosted repository still leads to them, and the blobs no
/// remaining manifest uses. A reference without tag or digest means `:latest`. Guarded blobs
/// (being read or filled) are left for a later pass.
pub async fn purge<S: Storage + ?Sized>(
    storage: &S,
    budget: &DiskBudget,
    observer: &dyn Observer,
    targets: &[Reference],
) -> Result<PurgeReport> {
    let mut report = PurgeReport::default();
    let mut roots = Vec::new();
    for target in targets {
        let tags: Vec<TagKey> = match (target.digest(), target.tag()) {
            (Some(digest), _) => {
                roots.push(digest.clone());
                tags_pointing_at(storage, target, digest).await?
            }
            (None, tag) => vec![TagKey {
                upstream: target.registry().clone(),
                repository: target.repository().clone(),
                tag: tag.cloned().unwrap_or_else(Tag::latest),
            }],
        };
        for key in tags {
            if let Some(record) = storage.tag_get(&key).await? {
                roots.push(record.digest);
                storage.tag_delete(&key).await?;
                report.tags += 1;
            }
        }
    }
    let doomed = reachable(storage, roots).await?;
    // What other tags still lead to stays, and so does everything a hosted
    // repository links (pushed content is never purged): its manifests with
    // their index children, configs and layers.
    let mut kept_roots = crate::storage::protected_manifests(storage).await?;
    let mut tags = storage.record_list(&RecordPrefix::tags());
    while let Some(key) = tags.next().await {
        let Some(tag) = key?.tag_key() else { continue };
        if let Some(record) = storage.tag_get(&tag).await? {
            kept_roots.push(record.digest);
        }
    }
    drop(tags);
    let kept = reachable(storage, kept_roots).await?;
    for digest in doomed.manifests.difference(&kept.manifests) {
        if storage.manifest_get(digest).await?.is_some() {
            storage.manifest_delete(digest).await?;
            report.manifests += 1;
        }
    }
    let mut in_use = blobs_of_stored_manifests(storage).await?;
    // A blob just pushed for a manifest still to come is in use too.
    in_use.extend(crate::storage::protected_blobs(storage).await?);
    for digest in doomed.blobs.difference(&in_use) {
        let Some(info) = storage.blob_stat(digest).await? else {
            continue;
        };
        if !budget.begin_delete(digest) {
            report.busy += 1;
            continue;
        }
        let deleted = storage.blob_delete(digest).await;
        budget.end_delete(digest);
        match deleted {
            Ok(()) => {
                budget.removed(info.size);
                report.blobs += 1;
                report.bytes += info.size;
            }
            Err(e) => warn!(%digest, error = %ErrorChain(&e), "cannot delete a purged blob"),
        }
    }
    info!(?report, "purged");
    observer.eviction(&EvictionEvent {
        blobs: report.blobs,
        bytes: report.bytes,
        stored_bytes: budget.stored(),
        protected_bytes: 0,
        protected_over_cap: false,
    });
    Ok(report)
}

async fn tags_pointing_at<S: Storage + ?Sized>(
    storage: &S,
    target: &Reference,
    digest: &Digest,
) -> Result<Vec<TagKey>> {
    let mut found = Vec::new();
    for tag in storage
        .tag_list(target.registry(), target.repository())
        .await?
    {
        let key = TagKey {
            upstream: target.registry().clone(),
            repository: target.repository().clone(),
            tag,
        };
        if storage
            .tag_get(&key)
            .await?
            .is_some_and(|record| record.digest == *digest)
        {
            found.push(key);
        }
    }
    Ok(found)
}

/// Every blob some stored manifest names.
async fn blobs_of_stored_manifests<S: Storage + ?Sized>(storage: &S) -> Result<HashSet<Digest>> {
    let mut blobs = HashSet::new();
    let mut manifests = storage.record_list(&RecordPrefix::manifests());
    while let Some(key) = manifests.next().await {
        let Some(digest) = key?.manifest_digest() else {
            continue;
        };
        let Some(stored) = storage.manifest_get(&digest).await? else {
            continue;
        };
        if let Ok(Manifest::Image(image)) = Manifest::parse(&digest, &stored.bytes) {
            blobs.extend(image.blobs().map(|d| d.digest.clone()));
        }
    }
    Ok(blobs)
}
