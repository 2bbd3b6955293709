//! Manifests of hosted repositories: `PUT` (checked, linked, tagged),
//! `GET` by tag or digest, `DELETE` of a manifest or a tag.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Hosted, Referrer};
use crate::digest::Digest;
use crate::manifest::{is_manifest_type, Manifest, ManifestFields};
use crate::reference::{ManifestRef, Repository, Tag};
use crate::storage::{HostedKey, Record, RecordKey, RecordWrite, Storage, StoredManifest};
use crate::{Error, PushErrorKind, Result};

/// What a manifest `PUT` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    /// The digest of the bytes stored.
    pub digest: Digest,
    /// The manifest's `subject` (OCI 1.1 referrers), answered as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// The record a hosted tag link holds.
#[derive(Debug, Serialize, Deserialize)]
struct TagLink {
    digest: Digest,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::push(PushErrorKind::ManifestInvalid, message)
}

impl<S: Storage + ?Sized> Hosted<S> {
    /// Stores a pushed manifest under `reference` (a tag, or its digest).
    ///
    /// Checked first: the size limit, the digest when pushed by digest, the
    /// shape, and that every blob (config, layers) or child manifest it
    /// references is stored; a `subject` need not exist. The manifest is
    /// then stored as an ordinary manifest record, linked to the repository
    /// and, for a tag, the tag is pointed at it.
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &ManifestRef,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest> {
        let limit = self.options.max_manifest_size;
        if bytes.len() as u64 > limit {
            return Err(Error::push(
                PushErrorKind::SizeInvalid,
                format!(
                    "the manifest is {} bytes, over the limit of {limit}",
                    bytes.len()
                ),
            ));
        }
        let digest = match reference {
            ManifestRef::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(Error::push(
                        PushErrorKind::DigestInvalid,
                        format!("the manifest hashes to {actual}, not {expected}"),
                    ));
                }
                actual
            }
            ManifestRef::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = Manifest::parse(&digest, &bytes).map_err(|e| invalid(e.to_string()))?;
        let extra = ManifestFields::parse(&bytes)?;
        let media_type = content_type
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned())
            .filter(|t| !t.is_empty() && t != "application/octet-stream")
            .or(extra.media_type())
            .ok_or_else(|| {
                invalid("the manifest has no media type: send it as Content-Type or mediaType")
            })?;
        if !is_manifest_type(&media_type) {
            // Served back as its Content-Type from the registry's origin: a
            // `text/html` "manifest" would be a page a browser renders there.
            return Err(invalid(format!(
                "{media_type} is not a manifest media type; push an OCI or Docker \
                 image manifest or index"
            )));
        }
        if let Some(declared) = extra.media_type() {
            if declared != media_type {
                return Err(invalid(format!(
                    "Content-Type {media_type} differs from the manifest's mediaType {declared}"
                )));
            }
        }
        self.check_references(repository, &parsed).await?;
        let referrer = extra
            .subject_digest()
            .map(|subject| (subject, Referrer::of(&media_type, &digest, &bytes, &extra)));
        self.storage
            .manifest_put(&StoredManifest {
                digest: digest.clone(),
                media_type,
                bytes,
            })
            .await?;
        let link = HostedKey::Manifest(repository.clone(), digest.clone());
        self.storage
            .record_put(
                &RecordKey::hosted(&link),
                Record::new(Bytes::new()),
                RecordWrite::Overwrite,
            )
            .await?;
        // The link keeps the manifest's blobs now: their push graces end.
        let named: Vec<Digest> = match &parsed {
            Manifest::Image(image) => image.blobs().map(|blob| blob.digest.clone()).collect(),
            Manifest::Index(index) => index
                .manifests
                .iter()
                .filter(|child| !child.is_manifest())
                .map(|child| child.digest.clone())
                .collect(),
        };
        self.release_pushed(&named).await;
        // After the manifest link: a listed referrer can always be pulled.
        if let Some((subject, referrer)) = &referrer {
            self.link_referrer(repository, subject, referrer).await?;
        }
        if let ManifestRef::Tag(tag) = reference {
            self.tag_put(repository, tag, &digest).await?;
        }
        self.catalog.insert(repository.to_string());
        tracing::info!(%repository, %reference, %digest, "manifest pushed");
        Ok(PushedManifest {
            digest,
            subject: referrer.map(|(subject, _)| subject),
        })
    }

    async fn check_references(&self, repository: &Repository, manifest: &Manifest) -> Result<()> {
        let missing = |what: &str, digest: &Digest| {
            Error::push(
                PushErrorKind::ManifestBlobUnknown,
                format!("the manifest references {what} {digest}, which {repository} does not hold; push it first"),
            )
        };
        match manifest {
            Manifest::Image(image) => {
                for blob in image.blobs() {
                    if self.storage.blob_stat(&blob.digest).await?.is_none() {
                        return Err(missing("blob", &blob.digest));
                    }
                }
            }
            Manifest::Index(index) => {
                for child in &index.manifests {
                    let present = if self.linked(repository, &child.digest).await? {
                        true
                    } else {
                        // An index may also list non-manifest artifacts (blobs).
                        !child.is_manifest()
                            && self.storage.blob_stat(&child.digest).await?.is_some()
                    };
                    if !present {
                        return Err(missing("manifest", &child.digest));
                    }
                }
            }
        }
        Ok(())
    }

    async fn linked(&self, repository: &Repository, digest: &Digest) -> Result<bool> {
        let link = HostedKey::Manifest(repository.clone(), digest.clone());
        Ok(self
            .storage
            .record_get(&RecordKey::hosted(&link))
            .await?
            .is_some())
    }

    async fn tag_put(&self, repository: &Repository, tag: &Tag, digest: &Digest) -> Result<()> {
        let bytes = serde_json::to_vec(&TagLink {
            digest: digest.clone(),
        })
        .map_err(|e| Error::Storage {
            backend: "records",
            message: format!("cannot encode tag {tag}"),
            source: Some(Box::new(e)),
        })?;
        self.storage
            .record_put(
                &RecordKey::hosted(&HostedKey::Tag(repository.clone(), tag.clone())),
                Record::new(bytes),
                RecordWrite::Overwrite,
            )
            .await?;
        Ok(())
    }

    /// The digest `reference` names in `repository`;
    /// [`NotFound`](Error::NotFound) when it is not there.
    pub async fn resolve(
        &self,
        repository: &Repository,
        reference: &ManifestRef,
    ) -> Result<Digest> {
        let not_found = || Error::not_found(format!("manifest {repository}:{reference}"));
        match reference {
            ManifestRef::Digest(digest) => {
                if self.linked(repository, digest).await? {
                    Ok(digest.clone())
                } else {
                    Err(not_found())
                }
            }
            ManifestRef::Tag(tag) => {
                let key = RecordKey::hosted(&HostedKey::Tag(repository.clone(), tag.clone()));
                let record = self.storage.record_get(&key).await?.ok_or_else(not_found)?;
                let link: TagLink =
                    serde_json::from_slice(&record.bytes).map_err(|e| Error::Storage {
                        backend: "records",
                        message: format!("tag record {key} is not valid JSON; push the tag again"),
                        source: Some(Box::new(e)),
                    })?;
                Ok(link.digest)
            }
        }
    }

    /// A manifest of `repository` by tag or digest.
    pub async fn manifest(
        &self,
        repository: &Repository,
        reference: &ManifestRef,
    ) -> Result<StoredManifest> {
        let digest = self.resolve(repository, reference).await?;
        self.storage
            .manifest_get(&digest)
            .await?
            .ok_or_else(|| Error::not_found(format!("manifest {digest}")))
    }

    /// Deletes a tag (the manifest stays), or a manifest by digest with
    /// every tag of `repository` pointing at it. The manifest's bytes stay
    /// in storage for other repositories and the cache; eviction may drop
    /// them once no hosted repository links them.
    pub async fn delete(&self, repository: &Repository, reference: &ManifestRef) -> Result<()> {
        let digest = self.resolve(repository, reference).await?;
        // The repository may lose its last link.
        self.catalog.invalidate();
        match reference {
            ManifestRef::Tag(tag) => {
                self.storage
                    .record_delete(&RecordKey::hosted(&HostedKey::Tag(
                        repository.clone(),
                        tag.clone(),
                    )))
                    .await?;
            }
            ManifestRef::Digest(_) => {
                let tags = self.tag_links(repository).await?;
                for tag in tags {
                    if self
                        .resolve(repository, &ManifestRef::Tag(tag.clone()))
                        .await?
                        == digest
                    {
                        self.storage
                            .record_delete(&RecordKey::hosted(&HostedKey::Tag(
                                repository.clone(),
                                tag,
                            )))
                            .await?;
                    }
                }
                // Before the manifest link: a listed referrer can always be pulled.
                self.unlink_referrer(repository, &digest).await?;
                self.storage
                    .record_delete(&RecordKey::hosted(&HostedKey::Manifest(
                        repository.clone(),
                        digest.clone(),
                    )))
                    .await?;
            }
        }
        tracing::info!(%repository, %reference, "deleted");
        Ok(())
    }
}
