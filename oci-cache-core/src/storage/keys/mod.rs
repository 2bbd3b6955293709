//! The only place storage keys are derived.
//!
//! A key is a relative, `/`-separated string such as
//! `blobs/sha256/e3/e3b0c442…`. Backends turn it into a file path (under
//! their root) or an object name (under their prefix); nobody else builds
//! keys, and nothing is ever derived from raw request text, only from the
//! parsed [`Digest`], [`Registry`], [`Repository`] and [`Tag`] types.
//!
//! Every segment is additionally escaped here (see [`segment`]), so even a
//! validation bug upstream of storage could not produce `..`, an empty
//! segment, a `/` inside a segment, or one of the reserved `_`-names: keys
//! cannot leave the storage root.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::{Error, PushErrorKind, Result};

use super::TagKey;

/// Top-level directory of blobs.
pub(crate) const BLOBS: &str = "blobs";
/// Top-level directory of manifests.
pub(crate) const MANIFESTS: &str = "manifests";
/// Top-level directory of tag records.
pub(crate) const TAGS: &str = "tags";
/// Top-level directory of hosted (pushed) repositories' tag and manifest links.
pub(crate) const HOSTED: &str = "hosted";
/// Top-level directory of upload sessions.
pub(crate) const UPLOADS: &str = "uploads";
/// Top-level directory of the bytes of open upload sessions, one directory
/// per session: never blobs, so nothing but the session can see or remove them.
pub(crate) const UPLOAD_PIECES: &str = "upload-pieces";
/// Top of the records keeping a just-pushed blob until a manifest names it.
pub(crate) const PUSHED: &str = "pushed";
/// The directory of a hosted repository that links the manifests pushed to it.
pub(crate) const MANIFEST_DIR: &str = "_manifests";
/// The directory of a hosted repository that links each `subject` to the
/// manifests referring to it (the OCI 1.1 referrers API).
pub(crate) const REFERRER_DIR: &str = "_referrers";
/// Top-level directory of what cached repositories' upstreams said refers
/// to a digest (OCI 1.1 referrers, from the API or the tag schema).
pub(crate) const REFERRERS: &str = "referrers";
/// Top-level directory of the access index (last use of blobs, by shard).
pub(crate) const ACCESS: &str = "access";
/// Top-level directory of the leases replicas on one bucket coordinate
/// with (see `fleet`): fill leases by digest, and single ones by name.
pub(crate) const LEASES: &str = "leases";
/// Top-level directory of removal notices: blobs another process (`purge`,
/// `gc`) removed, so that a server on the same storage can follow (see
/// `evict::removals`).
pub(crate) const REMOVALS: &str = "removals";
/// Where in-progress writes live until they are verified (filesystem only).
#[cfg_attr(not(feature = "fs"), allow(dead_code))]
pub(crate) const STAGING: &str = "_staging";
/// The directory of a repository that holds its tag records; the leading `_`
/// cannot start an escaped segment, so it never clashes with a repository name.
pub(crate) const TAG_DIR: &str = "_tags";
/// Suffix of the object that holds a record's media type where the store has
/// no metadata of its own (the filesystem, `LocalFileSystem`).
pub(crate) const MEDIA_TYPE_SUFFIX: &str = ".media-type";

/// `blobs/<algorithm>/<first two hex>/<hex>`.
pub(crate) fn blob(digest: &Digest) -> String {
    content(BLOBS, digest)
}

/// `leases/fill/<algorithm>/<first two hex>/<hex>`: the lease of the
/// replica filling a blob.
pub(crate) fn fill_lease(digest: &Digest) -> String {
    content(&format!("{LEASES}/fill"), digest)
}

/// `leases/uploads`: the markers of blob uploads in progress.
pub(crate) const UPLOAD_MARKERS: &str = "leases/uploads";

/// `leases/uploads/<algorithm>/<first two hex>/<hex>`: the markers of the
/// multipart uploads of one blob in progress, one per upload.
pub(crate) fn upload_markers(digest: &Digest) -> String {
    content(UPLOAD_MARKERS, digest)
}

/// `leases/uploads/<algorithm>/<first two hex>/<hex>/<marker>`: the marker
/// naming one multipart upload of a blob (its id and its writer), so that
/// another replica can abort it when its writer died.
pub(crate) fn upload_marker(digest: &Digest, marker: &str) -> String {
    format!("{}/{}", upload_markers(digest), segment(marker))
}

/// The blob an upload marker key names, or `None`.
pub(crate) fn parse_upload_marker(key: &str) -> Option<Digest> {
    let (dir, marker) = key.rsplit_once('/')?;
    // `<algorithm>/<shard>/<hex>` as under `blobs/`.
    let rest = dir.strip_prefix(UPLOAD_MARKERS)?.strip_prefix('/')?;
    let digest = parse_content(BLOBS, &format!("{BLOBS}/{rest}"))?;
    (upload_marker(&digest, marker) == key).then_some(digest)
}

/// `leases/<name>`: a fleet-wide lease that is not about one blob (the
/// eviction pass, the conditional-write probe). `name` is one of ours,
/// never request text.
pub(crate) fn named_lease(name: &'static str) -> String {
    format!("{LEASES}/{}", segment(name))
}

/// `removals/<id>`: one removal notice. `id` is one of ours, never request text.
pub(crate) fn removal(id: &str) -> String {
    format!("{REMOVALS}/{}", segment(id))
}

/// The id of a removal notice's key, or `None` for any other key.
pub(crate) fn parse_removal(key: &str) -> Option<String> {
    let id = key.strip_prefix(REMOVALS)?.strip_prefix('/')?;
    if id.contains('/') {
        return None;
    }
    unsegment(id)
}

/// `manifests/<algorithm>/<first two hex>/<hex>`.
pub(crate) fn manifest(digest: &Digest) -> String {
    content(MANIFESTS, digest)
}

/// Where a store without object metadata keeps a record's media type:
/// `manifests/<algorithm>/<first two hex>/<hex>.media-type` for a manifest.
/// `None` when that name would itself be a record key (tag `v1`'s sidecar
/// would be tag `v1.media-type`): such records cannot carry a media type
/// there, and listings can always tell sidecars from records.
pub(crate) fn media_type_sidecar(record_key: &str) -> Option<String> {
    let sidecar = format!("{record_key}{MEDIA_TYPE_SUFFIX}");
    (!is_record(&sidecar)).then_some(sidecar)
}

/// Sharding by the first two hex characters keeps directories small (256
/// entries at the top), as distribution's filesystem driver does.
fn content(top: &str, digest: &Digest) -> String {
    let hex = digest.hex();
    let shard = hex.get(..2).unwrap_or(hex);
    format!("{top}/{}/{shard}/{hex}", digest.algorithm())
}

/// The digest a blob key names, or `None` for anything that is not a blob key.
pub(crate) fn parse_blob(key: &str) -> Option<Digest> {
    parse_content(BLOBS, key)
}

/// The digest a `<top>/<algorithm>/<shard>/<hex>` key names, or `None`.
///
/// Re-parsing through [`Digest`] means a stray file in the tree (or a
/// `.media-type` sidecar) is skipped, never trusted.
pub(crate) fn parse_content(top: &str, key: &str) -> Option<Digest> {
    let mut parts = key.split('/');
    let (first, algorithm, shard, hex) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if first != top || parts.next().is_some() || hex.get(..2) != Some(shard) {
        return None;
    }
    format!("{algorithm}:{hex}").parse().ok()
}

/// Whether `key` is a record key exactly as this module derives it (a
/// manifest or a tag; `%61` for `a` does not count). New kinds of records
/// get a line here.
pub(crate) fn is_record(key: &str) -> bool {
    parse_content(MANIFESTS, key).is_some_and(|digest| manifest(&digest) == key)
        || parse_tag(key).is_some_and(|parsed| tag(&parsed) == key)
        || parse_hosted(key).is_some_and(|parsed| hosted(&parsed) == key)
        || parse_upload(key).is_some_and(|id| upload(&id) == key)
        || parse_upload_piece(key).is_some_and(|(id, index)| upload_piece(&id, index) == key)
        || parse_access(key).is_some_and(|(algorithm, shard)| access(&algorithm, &shard) == key)
        || parse_content(PUSHED, key).is_some_and(|digest| pushed(&digest) == key)
        || parse_removal(key).is_some_and(|id| removal(&id) == key)
        || parse_cached_referrers(key).is_some_and(|(upstream, repository, subject)| {
            cached_referrers(&upstream, &repository, &subject) == key
        })
}

/// `referrers/<registry>/<repository components…>/_referrers/<algorithm>/<hex>`:
/// the referrers of `subject` in a cached repository, as last learned upstream.
pub(crate) fn cached_referrers(
    upstream: &Registry,
    repository: &Repository,
    subject: &Digest,
) -> String {
    let mut key = format!("{REFERRERS}/{}", segment(upstream.as_str()));
    for component in repository.as_str().split('/') {
        key.push('/');
        key.push_str(&segment(component));
    }
    format!(
        "{key}/{REFERRER_DIR}/{}/{}",
        segment(subject.algorithm().as_str()),
        segment(subject.hex())
    )
}

/// The upstream, repository and subject a `referrers/…` key names, or `None`.
pub(crate) fn parse_cached_referrers(key: &str) -> Option<(Registry, Repository, Digest)> {
    let rest = key.strip_prefix(REFERRERS)?.strip_prefix('/')?;
    let (upstream, rest) = rest.split_once('/')?;
    // Escaped repository components never start with `_`.
    let (repository, subject) = rest.split_once(&format!("/{REFERRER_DIR}/"))?;
    let (algorithm, hex) = subject.split_once('/')?;
    let components: Option<Vec<String>> = repository.split('/').map(unsegment).collect();
    Some((
        Registry::new(&unsegment(upstream)?).ok()?,
        Repository::new(&components?.join("/")).ok()?,
        format!("{}:{}", unsegment(algorithm)?, unsegment(hex)?)
            .parse()
            .ok()?,
    ))
}

/// `pushed/<algorithm>/<shard>/<hex>`: a just-pushed blob's grace record.
pub(crate) fn pushed(digest: &Digest) -> String {
    content(PUSHED, digest)
}

/// `hosted/<repository components…>`.
pub(crate) fn hosted_dir(repository: &Repository) -> String {
    let mut key = HOSTED.to_owned();
    for component in repository.as_str().split('/') {
        key.push('/');
        key.push_str(&segment(component));
    }
    key
}

/// `hosted/<repository…>/_referrers/<subject algorithm>/<subject hex>`: the
/// links to every manifest of `repository` whose `subject` is `subject`.
pub(crate) fn hosted_referrers(repository: &Repository, subject: &Digest) -> String {
    format!(
        "{}/{REFERRER_DIR}/{}/{}",
        hosted_dir(repository),
        segment(subject.algorithm().as_str()),
        segment(subject.hex())
    )
}

/// `hosted/<repository…>/_tags/<tag>`, `hosted/<repository…>/_manifests/<algorithm>/<hex>`
/// or `hosted/<repository…>/_referrers/<subject algorithm>/<subject hex>/<algorithm>/<hex>`.
pub(crate) fn hosted(key: &HostedKey) -> String {
    match key {
        HostedKey::Tag(repository, tag) => format!(
            "{}/{TAG_DIR}/{}",
            hosted_dir(repository),
            segment(tag.as_str())
        ),
        HostedKey::Manifest(repository, digest) => format!(
            "{}/{MANIFEST_DIR}/{}/{}",
            hosted_dir(repository),
            digest.algorithm(),
            digest.hex()
        ),
        HostedKey::Referrer {
            repository,
            subject,
            manifest,
        } => format!(
            "{}/{}/{}",
            hosted_referrers(repository, subject),
            segment(manifest.algorithm().as_str()),
            segment(manifest.hex())
        ),
    }
}

/// The hosted link a `hosted/…` key names, or `None`.
pub(crate) fn parse_hosted(key: &str) -> Option<HostedKey> {
    let rest = key.strip_prefix(HOSTED)?.strip_prefix('/')?;
    let repository = |dir: &str| -> Option<Repository> {
        let components: Option<Vec<String>> = dir.split('/').map(unsegment).collect();
        Repository::new(&components?.join("/")).ok()
    };
    // Escaped repository components never start with `_`, so the first
    // `/_referrers/` ends the repository.
    if let Some((dir, tail)) = rest.split_once(&format!("/{REFERRER_DIR}/")) {
        let digest = |algorithm: &str, hex: &str| -> Option<Digest> {
            format!("{}:{}", unsegment(algorithm)?, unsegment(hex)?)
                .parse()
                .ok()
        };
        let mut parts = tail.split('/');
        let (subject_algorithm, subject_hex, algorithm, hex) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        return Some(HostedKey::Referrer {
            repository: repository(dir)?,
            subject: digest(subject_algorithm, subject_hex)?,
            manifest: digest(algorithm, hex)?,
        });
    }
    if let Some((dir, tail)) = rest.rsplit_once(&format!("/{TAG_DIR}/")) {
        if !tail.contains('/') && !dir.contains(&format!("/{MANIFEST_DIR}/")) {
            return Some(HostedKey::Tag(
                repository(dir)?,
                Tag::new(&unsegment(tail)?).ok()?,
            ));
        }
    }
    let (dir, tail) = rest.rsplit_once(&format!("/{MANIFEST_DIR}/"))?;
    let (algorithm, hex) = tail.split_once('/')?;
    let digest: Digest = format!("{algorithm}:{hex}").parse().ok()?;
    Some(HostedKey::Manifest(repository(dir)?, digest))
}

/// `uploads/<id>`.
pub(crate) fn upload(id: &UploadId) -> String {
    format!("{UPLOADS}/{}", id.as_str())
}

/// The upload id an `uploads/…` key names, or `None`.
pub(crate) fn parse_upload(key: &str) -> Option<UploadId> {
    key.strip_prefix(UPLOADS)?.strip_prefix('/')?.parse().ok()
}

/// `upload-pieces/<id>`: the pieces of one upload session.
pub(crate) fn upload_pieces_dir(id: &UploadId) -> String {
    format!("{UPLOAD_PIECES}/{}", id.as_str())
}

/// `upload-pieces/<id>/<index>`: the `index`th piece (from 0) of an upload's bytes.
pub(crate) fn upload_piece(id: &UploadId, index: u64) -> String {
    format!("{}/{index}", upload_pieces_dir(id))
}

/// The upload and index an `upload-pieces/…` key names, or `None`.
pub(crate) fn parse_upload_piece(key: &str) -> Option<(UploadId, u64)> {
    let rest = key.strip_prefix(UPLOAD_PIECES)?.strip_prefix('/')?;
    let (id, index) = rest.split_once('/')?;
    Some((id.parse().ok()?, index.parse().ok()?))
}

/// `access/<algorithm>/<shard>`: the last-use times of the blobs whose hex
/// starts with `shard` (two hex characters).
pub(crate) fn access(algorithm: &str, shard: &str) -> String {
    format!("{ACCESS}/{}/{}", segment(algorithm), segment(shard))
}

/// The algorithm and shard an `access/…` key names, or `None`.
pub(crate) fn parse_access(key: &str) -> Option<(String, String)> {
    let mut parts = key.strip_prefix(ACCESS)?.strip_prefix('/')?.split('/');
    let (algorithm, shard) = (parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && matches!(algorithm, "sha256" | "sha512")
        && shard.len() == 2
        && shard
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| (algorithm.to_owned(), shard.to_owned()))
}

/// `tags/<registry>/<repository components…>/_tags`.
pub(crate) fn tag_dir(upstream: &Registry, repository: &Repository) -> String {
    let mut key = format!("{TAGS}/{}", segment(upstream.as_str()));
    for component in repository.as_str().split('/') {
        key.push('/');
        key.push_str(&segment(component));
    }
    key.push('/');
    key.push_str(TAG_DIR);
    key
}

/// `tags/<registry>/<repository components…>/_tags/<tag>`.
pub(crate) fn tag(key: &TagKey) -> String {
    format!(
        "{}/{}",
        tag_dir(&key.upstream, &key.repository),
        segment(key.tag.as_str())
    )
}

/// The tag key a `tags/…` key names, or `None` when it is not one.
pub(crate) fn parse_tag(key: &str) -> Option<TagKey> {
    let rest = key.strip_prefix(TAGS)?.strip_prefix('/')?;
    let (upstream, rest) = rest.split_once('/')?;
    let (repository, tag) = rest.rsplit_once('/')?;
    let repository = repository.strip_suffix(TAG_DIR)?.strip_suffix('/')?;
    let components: Option<Vec<String>> = repository.split('/').map(unsegment).collect();
    Some(TagKey {
        upstream: Registry::new(&unsegment(upstream)?).ok()?,
        repository: Repository::new(&components?.join("/")).ok()?,
        tag: Tag::new(&unsegment(tag)?).ok()?,
    })
}

/// Escapes one path segment: bytes outside `[A-Za-z0-9._-]` and `%` become
/// `%XX`, as does a leading `.` or `_`. The result is never empty, `.`,
/// `..`, never contains `/` and never starts with `_`.
pub(crate) fn segment(raw: &str) -> String {
    if raw.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    for (i, byte) in raw.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_');
        if plain && !(i == 0 && matches!(byte, b'.' | b'_')) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reverses [`segment`]; `None` for text [`segment`] could not have produced.
pub(crate) fn unsegment(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The id of an upload session: 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// A new random id.
    pub fn random() -> Self {
        UploadId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as sent in `Location` and `Docker-Upload-UUID`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let valid = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(Error::push(
                PushErrorKind::UploadUnknown,
                format!("upload {s:?} is unknown; start a new one with POST …/blobs/uploads/"),
            ))
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hosted repository's link record: to a tag, to a manifest by digest, or
/// from a `subject` to a manifest referring to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostedKey {
    /// `hosted/<repository…>/_tags/<tag>`.
    Tag(Repository, Tag),
    /// `hosted/<repository…>/_manifests/<algorithm>/<hex>`.
    Manifest(Repository, Digest),
    /// `hosted/<repository…>/_referrers/<subject algorithm>/<subject hex>/<algorithm>/<hex>`:
    /// `manifest` names `subject` as its subject; the record holds its
    /// [`Referrer`](crate::hosted::Referrer) descriptor, so listing a subject's referrers reads only
    /// these records.
    Referrer {
        /// The repository both manifests are in.
        repository: Repository,
        /// The digest the referring manifest's `subject` names.
        subject: Digest,
        /// The referring manifest.
        manifest: Digest,
    },
}

impl HostedKey {
    /// The repository the link belongs to.
    pub fn repository(&self) -> &Repository {
        match self {
            HostedKey::Tag(repository, _)
            | HostedKey::Manifest(repository, _)
            | HostedKey::Referrer { repository, .. } => repository,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
