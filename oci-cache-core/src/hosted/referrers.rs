//! The OCI 1.1 referrers API of hosted repositories: which manifests of a
//! repository name a given digest as their `subject`.
//!
//! A `PUT` of a manifest with a subject writes a [`HostedKey::Referrer`]
//! link holding the descriptor the listing answers with, so a listing reads
//! one prefix of link records, never the repository's manifests.

use futures::TryStreamExt;

use super::Hosted;
use crate::digest::Digest;
use crate::manifest::ManifestFields;
use crate::reference::Repository;
use crate::referrers::Referrer;
use crate::storage::{HostedKey, Record, RecordKey, RecordPrefix, RecordWrite, Storage};
use crate::{Error, Result};

fn encoding_error(what: &str, e: serde_json::Error) -> Error {
    Error::Storage {
        backend: "records",
        message: format!("cannot encode {what}"),
        source: Some(Box::new(e)),
    }
}

impl<S: Storage + ?Sized> Hosted<S> {
    /// The manifests of `repository` whose `subject` is `subject`, sorted by
    /// digest; with `artifact_type`, only those of that artifact type. Empty
    /// (not [`NotFound`](Error::NotFound)) when there are none, even when
    /// neither the subject nor the repository exists, as the spec requires.
    pub async fn referrers(
        &self,
        repository: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let keys: Vec<RecordKey> = self
            .storage
            .record_list(&RecordPrefix::hosted_referrers(repository, subject))
            .try_filter(|key| {
                let ours = matches!(
                    key.hosted_key(),
                    Some(HostedKey::Referrer { repository: r, subject: s, .. })
                        if &r == repository && &s == subject
                );
                async move { ours }
            })
            .try_collect()
            .await?;
        let mut referrers = Vec::with_capacity(keys.len());
        for key in keys {
            // Gone since the listing: a concurrent delete of that manifest.
            let Some(record) = self.storage.record_get(&key).await? else {
                continue;
            };
            let referrer: Referrer =
                serde_json::from_slice(&record.bytes).map_err(|e| Error::Storage {
                    backend: "records",
                    message: format!(
                        "referrer record {key} is not valid JSON; push the referring manifest again"
                    ),
                    source: Some(Box::new(e)),
                })?;
            if referrer.matches(artifact_type) {
                referrers.push(referrer);
            }
        }
        referrers.sort_unstable_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        Ok(referrers)
    }

    /// Links `referrer` to `subject` in `repository`.
    pub(super) async fn link_referrer(
        &self,
        repository: &Repository,
        subject: &Digest,
        referrer: &Referrer,
    ) -> Result<()> {
        let bytes =
            serde_json::to_vec(referrer).map_err(|e| encoding_error("a referrer descriptor", e))?;
        let key = HostedKey::Referrer {
            repository: repository.clone(),
            subject: subject.clone(),
            manifest: referrer.digest.clone(),
        };
        self.storage
            .record_put(
                &RecordKey::hosted(&key),
                Record::new(bytes),
                RecordWrite::Overwrite,
            )
            .await?;
        Ok(())
    }

    /// Removes the referrer link of manifest `digest` of `repository`, if
    /// it has a subject.
    pub(super) async fn unlink_referrer(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<()> {
        let Some(stored) = self.storage.manifest_get(digest).await? else {
            // Linked manifests are protected from eviction, so this is a
            // store damaged by hand; a stale link is all that can remain.
            tracing::warn!(%repository, %digest, "manifest to delete is gone; its referrer link may stay");
            return Ok(());
        };
        let Some(subject) = ManifestFields::parse(&stored.bytes)?.subject_digest() else {
            return Ok(());
        };
        let key = HostedKey::Referrer {
            repository: repository.clone(),
            subject,
            manifest: digest.clone(),
        };
        self.storage.record_delete(&RecordKey::hosted(&key)).await?;
        Ok(())
    }
}
