//! [`FakeUpstream`]: a scripted, in-process [`Upstream`] that counts calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::AcceptSet;
use crate::digest::Digest;
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::reference::{ManifestRef, Registry, Repository};
use crate::referrers::Referrer;
use crate::upstream::{
    BlobRange, FetchedBlob, FetchedManifest, FetchedRange, ManifestHead, TagList, Upstream,
};

use super::BlobScript;
use crate::{Error, Result};

/// How many times each [`Upstream`] method of a [`FakeUpstream`] was called.
#[derive(Debug, Default)]
pub struct UpstreamCalls {
    manifest_head: AtomicUsize,
    manifest_get: AtomicUsize,
    blob_get: AtomicUsize,
    blob_head: AtomicUsize,
    tag_list: AtomicUsize,
    referrers: AtomicUsize,
}

impl UpstreamCalls {
    /// `manifest_head` calls.
    pub fn manifest_head(&self) -> usize {
        self.manifest_head.load(Ordering::SeqCst)
    }
    /// `manifest_get` calls.
    pub fn manifest_get(&self) -> usize {
        self.manifest_get.load(Ordering::SeqCst)
    }
    /// `blob_get` calls.
    pub fn blob_get(&self) -> usize {
        self.blob_get.load(Ordering::SeqCst)
    }
    /// `blob_head` calls.
    pub fn blob_head(&self) -> usize {
        self.blob_head.load(Ordering::SeqCst)
    }
    /// `tag_list` calls.
    pub fn tag_list(&self) -> usize {
        self.tag_list.load(Ordering::SeqCst)
    }
    /// `referrers` calls.
    pub fn referrers(&self) -> usize {
        self.referrers.load(Ordering::SeqCst)
    }
    /// Calls of every method together.
    pub fn total(&self) -> usize {
        self.manifest_head()
            + self.manifest_get()
            + self.blob_get()
            + self.blob_head()
            + self.tag_list()
            + self.referrers()
    }
}

/// One request a [`FakeUpstream`] received: registry, repository and what was
/// asked for (a tag, a digest, or `tags`).
pub type Asked = (String, String, String);

/// (registry, repository, tag) → the representations upstream has, by media type.
type TagKey = (String, String, String);

/// (registry, repository, subject) → its referrers.
type ReferrersKey = (String, String, Digest);

/// An in-process upstream registry for tests of the engine and the service.
///
/// Tags are scoped to a registry and repository; manifests by digest and
/// blobs are content-addressed and answered in any repository, as a real
/// registry that holds them would, unless a blob is scoped to one repository
/// with [`add_blob_at`](Self::add_blob_at). Every call is counted ([`calls`](Self::calls))
/// and recorded ([`asked`](Self::asked)); failures are scripted with
/// [`set_down`](Self::set_down) and [`fail_with`](Self::fail_with).
#[derive(Debug, Default)]
pub struct FakeUpstream {
    blobs: Mutex<HashMap<Digest, BlobScript>>,
    scoped_blobs: Mutex<HashMap<(String, String, Digest), BlobScript>>,
    panic_next: AtomicBool,
    tags: Mutex<HashMap<TagKey, Vec<(String, Bytes)>>>,
    by_digest: Mutex<HashMap<Digest, (String, Bytes)>>,
    tag_lists: Mutex<HashMap<(String, String), Vec<String>>>,
    fail: Mutex<Option<UpstreamErrorKind>>,
    down: AtomicBool,
    head_without_digest: AtomicBool,
    manifest_delay: Mutex<Duration>,
    accepts_seen: Mutex<Vec<Vec<String>>>,
    asked: Mutex<Vec<Asked>>,
    blob_ranges: Mutex<Vec<BlobRange>>,
    /// `None`: no referrers API (the default), as distribution 2.8.
    referrers: Mutex<Option<HashMap<ReferrersKey, Vec<Referrer>>>>,
    calls: UpstreamCalls,
}

/// Test state stays usable after a panicking test thread poisoned a lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeUpstream {
    /// An upstream with no content.
    pub fn new() -> Self {
        FakeUpstream::default()
    }

    /// Adds a blob, served in every repository; returns its digest.
    pub fn add_blob(&self, script: BlobScript) -> Digest {
        let digest = Digest::sha256_of(&script.bytes);
        lock(&self.blobs).insert(digest.clone(), script);
        digest
    }

    /// Adds a blob served only in `registry/repository` (other repositories
    /// answer 404 unless [`add_blob`](Self::add_blob) made it global); returns
    /// its digest. With [`BlobScript::fail_after`], that repository fails or
    /// stalls on the digest instead.
    pub fn add_blob_at(&self, registry: &str, repository: &str, script: BlobScript) -> Digest {
        let digest = Digest::sha256_of(&script.bytes);
        self.add_blob_at_as(registry, repository, &digest, script);
        digest
    }

    /// Like [`add_blob_at`](Self::add_blob_at) for `digest`, whatever the bytes hash to.
    pub fn add_blob_at_as(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
        script: BlobScript,
    ) {
        let key = (registry.to_owned(), repository.to_owned(), digest.clone());
        lock(&self.scoped_blobs).insert(key, script);
    }

    /// The next call of any method panics: a bug in an upstream client, to
    /// show that a panicking fetch does not wedge the engine.
    pub fn panic_next(&self) {
        self.panic_next.store(true, Ordering::SeqCst);
    }

    /// Serves `script` for `digest` even though the bytes do not hash to it:
    /// an upstream that lies.
    pub fn add_blob_as(&self, digest: &Digest, script: BlobScript) {
        lock(&self.blobs).insert(digest.clone(), script);
    }

    /// Makes `tag` of `registry/repository` resolve to `variants`
    /// (media type, bytes): the first variant the request accepts wins, as
    /// distribution picks a representation by `Accept`. Each variant is also
    /// reachable by its digest, and the tag joins the repository's tag list.
    pub fn set_tag(&self, registry: &str, repository: &str, tag: &str, variants: &[(&str, &[u8])]) {
        let variants: Vec<(String, Bytes)> = variants
            .iter()
            .map(|(media_type, bytes)| (media_type.to_string(), Bytes::copy_from_slice(bytes)))
            .collect();
        for (media_type, bytes) in &variants {
            lock(&self.by_digest).insert(
                Digest::sha256_of(bytes),
                (media_type.clone(), bytes.clone()),
            );
        }
        let key = (registry.to_owned(), repository.to_owned(), tag.to_owned());
        lock(&self.tags).insert(key, variants);
        let mut lists = lock(&self.tag_lists);
        let list = lists
            .entry((registry.to_owned(), repository.to_owned()))
            .or_default();
        if !list.iter().any(|t| t == tag) {
            list.push(tag.to_owned());
            list.sort();
        }
    }

    /// One manifest under `tag` and its digest; returns the digest.
    pub fn add_manifest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Digest {
        self.set_tag(registry, repository, tag, &[(media_type, bytes)]);
        Digest::sha256_of(bytes)
    }

    /// Serves `bytes` when asked for `digest` (which they need not hash to).
    pub fn add_manifest_as(&self, digest: &Digest, media_type: &str, bytes: &[u8]) {
        lock(&self.by_digest).insert(
            digest.clone(),
            (media_type.to_owned(), Bytes::copy_from_slice(bytes)),
        );
    }

    /// Replaces the tag list of `registry/repository`.
    pub fn set_tag_list(&self, registry: &str, repository: &str, tags: &[&str]) {
        lock(&self.tag_lists).insert(
            (registry.to_owned(), repository.to_owned()),
            tags.iter().map(|t| t.to_string()).collect(),
        );
    }

    /// Gives the upstream a referrers API (without one, the default, it
    /// answers [`referrers`](Upstream::referrers) with `None`).
    pub fn enable_referrers_api(&self) {
        lock(&self.referrers).get_or_insert_with(HashMap::new);
    }

    /// Lists `referrer` for `subject` in `registry/repository` through the
    /// referrers API (which this enables).
    pub fn add_referrer(
        &self,
        registry: &str,
        repository: &str,
        subject: &Digest,
        referrer: Referrer,
    ) {
        let key = (registry.to_owned(), repository.to_owned(), subject.clone());
        lock(&self.referrers)
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default()
            .push(referrer);
    }

    /// While `down`, every call fails as unavailable (connection refused).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While `Some`, every call fails with that kind.
    pub fn fail_with(&self, kind: Option<UpstreamErrorKind>) {
        *lock(&self.fail) = kind;
    }

    /// When set, HEAD answers carry no `Docker-Content-Digest`.
    pub fn set_head_without_digest(&self, without: bool) {
        self.head_without_digest.store(without, Ordering::SeqCst);
    }

    /// Delays every manifest GET by `delay`.
    pub fn set_manifest_delay(&self, delay: Duration) {
        *lock(&self.manifest_delay) = delay;
    }

    /// Call counts per method.
    pub fn calls(&self) -> &UpstreamCalls {
        &self.calls
    }

    /// Every request so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        lock(&self.asked).clone()
    }

    /// The range of every blob GET so far, in order (offset 0 for a whole
    /// blob, as [`blob_get`](Upstream::blob_get) asks).
    pub fn blob_ranges(&self) -> Vec<BlobRange> {
        lock(&self.blob_ranges).clone()
    }

    /// The offsets of [`blob_ranges`](Self::blob_ranges).
    pub fn blob_offsets(&self) -> Vec<u64> {
        lock(&self.blob_ranges).iter().map(|r| r.offset).collect()
    }

    /// The `accept` list of every manifest request so far, in order.
    pub fn accepts_seen(&self) -> Vec<Vec<String>> {
        lock(&self.accepts_seen).clone()
    }

    fn enter(
        &self,
        counter: &AtomicUsize,
        registry: &Registry,
        repository: &Repository,
        what: String,
    ) -> Result<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        lock(&self.asked).push((registry.to_string(), repository.to_string(), what));
        #[allow(clippy::panic)] // The scripted fault itself.
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("FakeUpstream: scripted panic");
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Unavailable,
                "http://127.0.0.1:1",
                "connection refused",
            )
            .into());
        }
        match *lock(&self.fail) {
            Some(kind) => Err(UpstreamError::new(kind, "fake", "scripted failure").into()),
            None => Ok(()),
        }
    }

    fn pick(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<(String, Bytes)> {
        lock(&self.accepts_seen).push(accept.to_vec());
        let found = match reference {
            ManifestRef::Digest(digest) => lock(&self.by_digest).get(digest).cloned(),
            ManifestRef::Tag(tag) => {
                let accept = AcceptSet::parse(accept);
                let key = (
                    registry.to_string(),
                    repository.to_string(),
                    tag.to_string(),
                );
                lock(&self.tags)
                    .get(&key)
                    .and_then(|v| v.iter().find(|(m, _)| accept.accepts(m)).cloned())
            }
        };
        found.ok_or_else(|| {
            UpstreamError::new(UpstreamErrorKind::NotFound, "fake", "manifest unknown").into()
        })
    }

    fn blob_script(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<BlobScript> {
        let key = (registry.to_string(), repository.to_string(), digest.clone());
        if let Some(script) = lock(&self.scoped_blobs).get(&key).cloned() {
            return Ok(script);
        }
        lock(&self.blobs).get(digest).cloned().ok_or_else(|| {
            UpstreamError::new(UpstreamErrorKind::NotFound, "fake", "blob unknown").into()
        })
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn manifest_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestHead> {
        self.enter(
            &self.calls.manifest_head,
            registry,
            repository,
            reference.to_string(),
        )?;
        let (media_type, bytes) = self.pick(registry, repository, reference, accept)?;
        let digest =
            (!self.head_without_digest.load(Ordering::SeqCst)).then(|| Digest::sha256_of(&bytes));
        Ok(ManifestHead {
            digest,
            media_type,
            size: Some(bytes.len() as u64),
        })
    }

    async fn manifest_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<FetchedManifest> {
        let delay = *lock(&self.manifest_delay);
        tokio::time::sleep(delay).await;
        self.enter(
            &self.calls.manifest_get,
            registry,
            repository,
            reference.to_string(),
        )?;
        let (media_type, bytes) = self.pick(registry, repository, reference, accept)?;
        Ok(FetchedManifest {
            head: ManifestHead {
                digest: None,
                media_type,
                size: Some(bytes.len() as u64),
            },
            bytes,
        })
    }

    async fn blob_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<FetchedBlob> {
        self.blob_get_range(registry, repository, digest, &BlobRange::default())
            .await
            .map(FetchedBlob::from)
    }

    async fn blob_get_range(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: &BlobRange,
    ) -> Result<FetchedRange> {
        self.enter(
            &self.calls.blob_get,
            registry,
            repository,
            digest.to_string(),
        )?;
        lock(&self.blob_ranges).push(range.clone());
        let script = self.blob_script(registry, repository, digest)?;
        if let Some((kind, delay)) = script.fail {
            tokio::time::sleep(delay).await;
            return Err(UpstreamError::new(kind, "fake", "scripted blob failure").into());
        }
        script.answer(range)
    }

    async fn blob_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<u64> {
        self.enter(
            &self.calls.blob_head,
            registry,
            repository,
            digest.to_string(),
        )?;
        Ok(self.blob_script(registry, repository, digest)?.bytes.len() as u64)
    }

    async fn tag_list(
        &self,
        registry: &Registry,
        repository: &Repository,
        _n: Option<usize>,
        _last: Option<&str>,
    ) -> Result<TagList> {
        self.enter(&self.calls.tag_list, registry, repository, "tags".into())?;
        let tags = lock(&self.tag_lists)
            .get(&(registry.to_string(), repository.to_string()))
            .cloned()
            .ok_or_else(|| {
                Error::from(UpstreamError::new(
                    UpstreamErrorKind::NotFound,
                    "fake",
                    "no such repository",
                ))
            })?;
        Ok(TagList {
            name: repository.to_string(),
            tags,
        })
    }

    async fn referrers(
        &self,
        registry: &Registry,
        repository: &Repository,
        subject: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        self.enter(
            &self.calls.referrers,
            registry,
            repository,
            format!("referrers/{subject}"),
        )?;
        let key = (
            registry.to_string(),
            repository.to_string(),
            subject.clone(),
        );
        Ok(lock(&self.referrers)
            .as_ref()
            .map(|api| api.get(&key).cloned().unwrap_or_default()))
    }
}
