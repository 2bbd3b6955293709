//! Records: the small keyed objects every backend stores besides blobs.
//!
//! A record is a few bytes plus an optional media type under a
//! [`RecordKey`]. Keys are built only from typed values (a [`Digest`], a
//! [`TagKey`]) by `keys.rs`, so a backend never sees request text; it maps a
//! key's `/`-separated [`as_str`](RecordKey::as_str) onto its own namespace
//! (a path under a root, an object name under a prefix, a map key) and turns
//! what it lists back into keys with [`RecordKey::parse`], which rejects
//! anything this crate could not have written (stray files, the
//! filesystem's `.media-type` sidecars).

use std::fmt;

use bytes::Bytes;

use super::{keys, HostedKey, TagKey, UploadId};
use crate::digest::Digest;
use crate::reference::{Registry, Repository};

/// Where a record lives.
///
/// Built only from typed values (a [`Digest`], a [`TagKey`]), so a backend
/// never sees request text. A backend maps [`as_str`](Self::as_str) onto its
/// own namespace (a path under a root, an object name under a prefix, a map
/// key) and turns what it lists back into keys with [`parse`](Self::parse),
/// which skips anything this crate could not have written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);

impl RecordKey {
    /// The record of a manifest: `manifests/<algorithm>/<shard>/<hex>`.
    pub fn manifest(digest: &Digest) -> Self {
        RecordKey(keys::manifest(digest))
    }

    /// The record of a tag: `tags/<registry>/<repository…>/_tags/<tag>`.
    pub fn tag(key: &TagKey) -> Self {
        RecordKey(keys::tag(key))
    }

    /// A hosted repository's link to a tag, a manifest, or a manifest by its
    /// subject: `hosted/<repository…>/_tags/<tag>`,
    /// `hosted/<repository…>/_manifests/<algorithm>/<hex>` or
    /// `hosted/<repository…>/_referrers/<subject algorithm>/<subject hex>/<algorithm>/<hex>`.
    pub fn hosted(key: &HostedKey) -> Self {
        RecordKey(keys::hosted(key))
    }

    /// What a cached repository's upstream said refers to `subject` (OCI
    /// 1.1 referrers): `referrers/<registry>/<repository…>/_referrers/<algorithm>/<hex>`.
    pub fn cached_referrers(
        upstream: &Registry,
        repository: &Repository,
        subject: &Digest,
    ) -> Self {
        RecordKey(keys::cached_referrers(upstream, repository, subject))
    }

    /// An upload session: `uploads/<id>`.
    pub fn upload(id: &UploadId) -> Self {
        RecordKey(keys::upload(id))
    }

    /// The `index`th piece (from 0) of an upload session's bytes:
    /// `upload-pieces/<id>/<index>`.
    pub fn upload_piece(id: &UploadId, index: u64) -> Self {
        RecordKey(keys::upload_piece(id, index))
    }

    /// The grace record of a blob a push just completed, which keeps it
    /// until a manifest names it or the grace ends:
    /// `pushed/<algorithm>/<shard>/<hex>` (see [`RecordPrefix::protecting_blobs`]).
    pub fn pushed_blob(digest: &Digest) -> Self {
        RecordKey(keys::pushed(digest))
    }

    /// A removal notice: `removals/<id>` (see
    /// [`evict::announce_removal`](crate::evict::announce_removal)).
    pub fn removal(id: &str) -> Self {
        RecordKey(keys::removal(id))
    }

    /// The id of a removal notice's key.
    pub fn removal_id(&self) -> Option<String> {
        keys::parse_removal(&self.0)
    }

    /// The blob this key keeps, if it is a grace record under
    /// [`RecordPrefix::protecting_blobs`].
    pub fn protected_blob(&self) -> Option<Digest> {
        keys::parse_content(keys::PUSHED, &self.0)
    }

    /// The upload session and piece index this key names, if it is a piece.
    pub fn upload_piece_index(&self) -> Option<(UploadId, u64)> {
        keys::parse_upload_piece(&self.0)
    }

    /// The manifest this record keeps from eviction and purge, if it lies
    /// under one of [`RecordPrefix::protecting`] and links one (a hosted
    /// repository's `_manifests/<algorithm>/<hex>` link).
    pub fn protected_manifest(&self) -> Option<Digest> {
        match keys::parse_hosted(&self.0)? {
            HostedKey::Manifest(_, digest) => Some(digest),
            HostedKey::Tag(..) | HostedKey::Referrer { .. } => None,
        }
    }

    /// The hosted link this key names, if it is one.
    pub fn hosted_key(&self) -> Option<HostedKey> {
        keys::parse_hosted(&self.0)
    }

    /// The upload session this key names, if it is one.
    pub fn upload_id(&self) -> Option<UploadId> {
        keys::parse_upload(&self.0)
    }

    /// A key read back from a backend's listing, or `None` when `key` is not
    /// one this crate derives (so stray objects are skipped, never trusted).
    pub fn parse(key: &str) -> Option<Self> {
        keys::is_record(key).then(|| RecordKey(key.to_owned()))
    }

    /// The access-index record of the blobs whose `digest` shares its shard
    /// (`access/<algorithm>/<first two hex>`): their last-use times.
    pub fn access(digest: &Digest) -> Self {
        let hex = digest.hex();
        let shard = hex.get(..2).unwrap_or(hex);
        RecordKey(keys::access(digest.algorithm().as_str(), shard))
    }

    /// The `/`-separated relative key; every segment is already escaped and
    /// safe to use as a file or object name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The manifest digest this key names, if it is a manifest key.
    pub fn manifest_digest(&self) -> Option<Digest> {
        keys::parse_content(keys::MANIFESTS, &self.0)
    }

    /// The tag this key names, if it is a tag key.
    pub fn tag_key(&self) -> Option<TagKey> {
        keys::parse_tag(&self.0)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of records to list: every key equal to the prefix or below it
/// (whole segments only: `tags/a` does not cover `tags/ab/…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordPrefix(String);

impl RecordPrefix {
    /// Every manifest record.
    pub fn manifests() -> Self {
        RecordPrefix(keys::MANIFESTS.to_owned())
    }

    /// Every tag record of every upstream.
    pub fn tags() -> Self {
        RecordPrefix(keys::TAGS.to_owned())
    }

    /// Every hosted repository's links.
    pub fn hosted() -> Self {
        RecordPrefix(keys::HOSTED.to_owned())
    }

    /// The links of one hosted repository (and of repositories nested below it).
    pub fn hosted_repository(repository: &Repository) -> Self {
        RecordPrefix(keys::hosted_dir(repository))
    }

    /// The links to the manifests of one hosted repository whose `subject`
    /// is `subject` (see [`HostedKey::Referrer`]).
    pub fn hosted_referrers(repository: &Repository, subject: &Digest) -> Self {
        RecordPrefix(keys::hosted_referrers(repository, subject))
    }

    /// The tag links of one hosted repository.
    pub fn hosted_tags(repository: &Repository) -> Self {
        RecordPrefix(format!(
            "{}/{}",
            keys::hosted_dir(repository),
            keys::TAG_DIR
        ))
    }

    /// Every upload session.
    pub fn uploads() -> Self {
        RecordPrefix(keys::UPLOADS.to_owned())
    }

    /// The prefixes whose records protect content: every manifest a record
    /// there links ([`RecordKey::protected_manifest`]), with its index
    /// children, config and layers, is never evicted or purged. Today the
    /// hosted repositories' links; whatever else must be kept is added here,
    /// and eviction reads it from storage without knowing what wrote it.
    pub fn protecting() -> [Self; 1] {
        [Self::hosted()]
    }

    /// The prefixes whose records each keep one blob (named by the key,
    /// [`RecordKey::protected_blob`]) from eviction and purge until the
    /// time their body holds (decimal Unix seconds): today the grace
    /// records of blobs a push completed, so that the layers pushed before
    /// their manifest are still there when it arrives.
    pub fn protecting_blobs() -> [Self; 1] {
        [RecordPrefix(keys::PUSHED.to_owned())]
    }

    /// The pieces of every upload session.
    pub fn upload_pieces() -> Self {
        RecordPrefix(keys::UPLOAD_PIECES.to_owned())
    }

    /// The pieces of one upload session.
    pub fn upload_pieces_of(id: &UploadId) -> Self {
        RecordPrefix(keys::upload_pieces_dir(id))
    }

    /// Every removal notice.
    pub fn removals() -> Self {
        RecordPrefix(keys::REMOVALS.to_owned())
    }

    /// Every record of the access index (see [`RecordKey::access`]).
    pub fn access() -> Self {
        RecordPrefix(keys::ACCESS.to_owned())
    }

    /// The tag records of one repository of one upstream (not those of
    /// repositories nested below it).
    pub fn tags_of(upstream: &Registry, repository: &Repository) -> Self {
        RecordPrefix(keys::tag_dir(upstream, repository))
    }

    /// The prefix as a `/`-separated relative key, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` is under this prefix.
    pub fn contains(&self, key: &RecordKey) -> bool {
        key.0
            .strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Display for RecordPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The content of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The bytes, exactly as stored.
    pub bytes: Bytes,
    /// The media type kept with the bytes (a manifest's `Content-Type`).
    pub media_type: Option<String>,
}

impl Record {
    /// A record of `bytes` without a media type.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Record {
            bytes: bytes.into(),
            media_type: None,
        }
    }

    /// Sets the media type.
    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = Some(media_type.into());
        self
    }
}

/// How [`Storage::record_put`](super::Storage::record_put) treats an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordWrite {
    /// Replace whatever is there.
    Overwrite,
    /// Write only if nothing is there (S3 `If-None-Match: *`); the
    /// building block for leases and upload sessions.
    Create,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::reference::Tag;

    #[test]
    fn keys_parse_back_and_prefixes_cover_whole_segments() {
        let digest = Digest::sha256_of(b"m");
        let manifest = RecordKey::manifest(&digest);
        assert_eq!(RecordKey::parse(manifest.as_str()), Some(manifest.clone()));
        assert_eq!(manifest.manifest_digest(), Some(digest.clone()));
        assert!(RecordPrefix::manifests().contains(&manifest));
        assert!(!RecordPrefix::tags().contains(&manifest));
        // The filesystem's media-type sidecar is not a record.
        assert_eq!(
            RecordKey::parse(&format!("{manifest}{}", keys::MEDIA_TYPE_SUFFIX)),
            None
        );
        assert_eq!(RecordKey::parse("blobs/sha256/e3/e3"), None);
        assert_eq!(RecordKey::parse("tags/x/_tags"), None);

        let key = TagKey {
            upstream: Registry::new("docker.io").unwrap(),
            repository: Repository::new("library/alpine").unwrap(),
            tag: Tag::new("3.20").unwrap(),
        };
        let tag = RecordKey::tag(&key);
        assert_eq!(RecordKey::parse(tag.as_str()), Some(tag.clone()));
        assert_eq!(tag.tag_key(), Some(key.clone()));
        assert!(RecordPrefix::tags_of(&key.upstream, &key.repository).contains(&tag));
        let nested = Repository::new("library/alpine/sub").unwrap();
        let shorter = Repository::new("library/alp").unwrap();
        assert!(!RecordPrefix::tags_of(&key.upstream, &nested).contains(&tag));
        assert!(!RecordPrefix::tags_of(&key.upstream, &shorter).contains(&tag));

        // Only a hosted repository's manifest link protects a manifest.
        let app = Repository::new("local/app").unwrap();
        let link = RecordKey::hosted(&HostedKey::Manifest(app.clone(), digest.clone()));
        assert_eq!(link.protected_manifest(), Some(digest.clone()));
        assert!(RecordPrefix::protecting().iter().any(|p| p.contains(&link)));
        let tag_link = RecordKey::hosted(&HostedKey::Tag(app, Tag::new("v1").unwrap()));
        assert_eq!(tag_link.protected_manifest(), None);
        assert_eq!(manifest.protected_manifest(), None);

        let access = RecordKey::access(&Digest::sha256_of(b""));
        assert_eq!(access.as_str(), "access/sha256/e3");
        assert_eq!(RecordKey::parse(access.as_str()), Some(access.clone()));
        assert!(RecordPrefix::access().contains(&access));
        assert_eq!(RecordKey::parse("access/sha256/E3"), None);
        assert_eq!(RecordKey::parse("access/md5/e3"), None);
        assert_eq!(RecordKey::parse("access/sha256/e3/x"), None);
    }
}
