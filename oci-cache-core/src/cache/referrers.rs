//! Referrers of cached repositories (OCI 1.1 content discovery): which
//! signatures, SBOMs and attestations refer to a digest, learned upstream
//! and kept under the tag rules.
//!
//! The upstream is asked through its referrers API. When it has none (it
//! answers `404`, as distribution 2.8 does), the list is built from the tag
//! schema exactly as OCI 1.1 clients build it: the `<algorithm>-<hex>` tag
//! names an image index listing the referrers. That index and every manifest
//! it lists are fetched through the normal manifest path, so they are cached
//! and pullable by digest afterwards (up to [`MAX_TAG_SCHEMA_MANIFESTS`];
//! the rest are listed as the index describes them). cosign's older
//! `.sig`/`.att` tags are not read: they name no subject, and a client using
//! them asks for those tags, which the mirror serves like any other.
//!
//! Either way the answer is the same list of descriptors, stored unfiltered
//! as one record per upstream, repository and subject
//! ([`RecordKey::cached_referrers`]) with when it was learned and how. It is
//! trusted for [`CacheOptions::tag_ttl`](super::CacheOptions::tag_ttl), then
//! learned again; when upstream fails (or the cache is offline) the record is
//! served stale, as a tag is. Concurrent requests share one upstream flight.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::accept::AcceptSet;
use super::manifest::{self, checked_within};
use super::{PullThrough, Shared};
use crate::digest::Digest;
use crate::error::{ErrorChain, UpstreamError, UpstreamErrorKind};
use crate::observe::{CacheOutcome, StorageOperation};
use crate::reference::{ManifestRef, Registry, Repository, Tag};
use crate::referrers::{self, Referrer};
use crate::storage::{Record, RecordKey, RecordWrite, Storage};
use crate::upstream::Upstream;
use crate::Result;

/// Most manifests of a tag schema index fetched (and cached) per listing:
/// an index may list thousands, and each is an upstream request.
pub const MAX_TAG_SCHEMA_MANIFESTS: usize = 64;

/// How the mirror learned a cached repository's referrers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReferrersSource {
    /// The upstream's referrers API.
    Api,
    /// The upstream's tag schema (`<algorithm>-<hex>` tags), for an upstream
    /// without the API.
    TagSchema,
}

impl ReferrersSource {
    /// `api` or `tag-schema`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReferrersSource::Api => "api",
            ReferrersSource::TagSchema => "tag-schema",
        }
    }
}

/// The referrers of a digest in a cached repository, ready to serve.
#[derive(Debug, Clone)]
pub struct ReferrersResponse {
    /// The referrers that passed the `artifactType` filter, in upstream's order.
    pub referrers: Vec<Referrer>,
    /// How upstream told the mirror, now or when the record was written.
    pub source: ReferrersSource,
    /// [`Miss`](CacheOutcome::Miss) (learned upstream now; `Coalesced`
    /// for requests that joined), [`Hit`](CacheOutcome::Hit) (a fresh
    /// record) or [`Stale`](CacheOutcome::Stale) (the record, upstream failed).
    pub outcome: CacheOutcome,
}

/// What the referrers record holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Learned {
    source: ReferrersSource,
    checked_at: SystemTime,
    referrers: Vec<Referrer>,
}

/// Single-flight key: upstream, repository, subject.
pub(super) type FlightKey = (Registry, Repository, Digest);

impl<S, U> PullThrough<S, U>
where
    S: Storage + ?Sized + 'static,
    U: Upstream + ?Sized + 'static,
{
    /// The manifests of `repository` whose `subject` is `subject`, as its
    /// upstream knows them; with `artifact_type`, only those of that type.
    /// Empty (not an error) when there are none.
    pub async fn referrers(
        &self,
        registry: &Registry,
        repository: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersResponse> {
        // A denied repository's signatures and SBOMs are denied too.
        self.allowed(registry, repository, None)?;
        let engine = &self.inner;
        let key = RecordKey::cached_referrers(registry, repository, subject);
        let cached = read(engine.storage.as_ref(), &key).await?;
        let ttl = engine.options.tag_ttl;
        if let Some(learned) = cached
            .as_ref()
            .filter(|l| checked_within(l.checked_at, ttl))
        {
            return Ok(respond(learned.clone(), CacheOutcome::Hit, artifact_type));
        }
        let task_engine = Arc::clone(engine);
        let flight_key: FlightKey = (registry.clone(), repository.clone(), subject.clone());
        let (result, started) = engine
            .referrer_flights
            .run(flight_key.clone(), move || async move {
                let (registry, repository, subject) = &flight_key;
                let learned = learn(&task_engine, registry, repository, subject).await?;
                store(&task_engine, &key, &learned).await;
                Ok(learned)
            })
            .await;
        match (result, cached) {
            (Ok(learned), _) => {
                let outcome = if started {
                    CacheOutcome::Miss
                } else {
                    CacheOutcome::Coalesced
                };
                Ok(respond(learned, outcome, artifact_type))
            }
            (Err(e), Some(learned)) => {
                warn!(%registry, %repository, %subject, error = %ErrorChain(&e),
                    "referrers from upstream failed; serving the cached list (stale-if-error)");
                Ok(respond(learned, CacheOutcome::Stale, artifact_type))
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// Asks upstream: its referrers API, else its tag schema.
async fn learn<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    subject: &Digest,
) -> Result<Learned>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let checked_at = SystemTime::now();
    let (source, referrers) = match engine
        .upstream
        .referrers(registry, repository, subject)
        .await?
    {
        Some(referrers) => (ReferrersSource::Api, referrers),
        None => {
            debug!(%registry, %repository, %subject, "upstream has no referrers API; reading the tag schema");
            let referrers = tag_schema(engine, registry, repository, subject).await?;
            (ReferrersSource::TagSchema, referrers)
        }
    };
    info!(%registry, %repository, %subject, source = source.as_str(), referrers = referrers.len(), "referrers learned upstream");
    Ok(Learned {
        source,
        checked_at,
        referrers,
    })
}

/// The referrers the tag schema lists: the `<algorithm>-<hex>` tag's index,
/// each listed manifest fetched (so it is cached) and described from its
/// own bytes, as the referrers API would. No such tag: none.
async fn tag_schema<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    subject: &Digest,
) -> Result<Vec<Referrer>>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let any = AcceptSet::parse::<String>(&[]);
    let tag = Tag::new(&referrers::fallback_tag(subject))?;
    let index = match manifest::manifest(engine, registry, repository, &ManifestRef::Tag(tag), &any)
        .await
    {
        Ok(index) => index,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let listed = referrers::parse_index(&index.bytes).ok_or_else(|| {
        UpstreamError::new(
            UpstreamErrorKind::Invalid,
            registry.as_str(),
            format!(
                "the referrers tag of {subject} in {repository} names a {} that lists no manifests",
                index.media_type
            ),
        )
    })?;
    if listed.len() > MAX_TAG_SCHEMA_MANIFESTS {
        warn!(%registry, %repository, %subject, listed = listed.len(), fetched = MAX_TAG_SCHEMA_MANIFESTS,
            "the referrers tag lists more manifests than are fetched per listing; the rest are listed as the index describes them");
    }
    let mut described = Vec::with_capacity(listed.len());
    for (i, entry) in listed.into_iter().enumerate() {
        if i >= MAX_TAG_SCHEMA_MANIFESTS {
            described.push(entry);
            continue;
        }
        let reference = ManifestRef::Digest(entry.digest.clone());
        let fetched = match manifest::manifest(engine, registry, repository, &reference, &any).await
        {
            Ok(fetched) => fetched,
            // Listed but gone (deleted after the index was written): not a referrer.
            Err(e) if e.is_not_found() => {
                debug!(digest = %entry.digest, "a manifest the referrers tag lists is gone upstream; left out");
                continue;
            }
            Err(e) => return Err(e),
        };
        // A body the manifest path accepted but that is no JSON object
        // cannot be; the index's own descriptor then stands.
        let referrer = Referrer::describe(&fetched.media_type, &fetched.digest, &fetched.bytes)
            .unwrap_or(entry);
        described.push(referrer);
    }
    Ok(described)
}

/// The record at `key`; a record that does not parse (written by hand, or
/// by a future version) counts as none and is replaced by the next answer.
async fn read<S: Storage + ?Sized>(storage: &S, key: &RecordKey) -> Result<Option<Learned>> {
    let Some(record) = storage.record_get(key).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&record.bytes) {
        Ok(learned) => Ok(Some(learned)),
        Err(e) => {
            warn!(%key, error = %e, "referrers record is not valid; asking upstream again");
            Ok(None)
        }
    }
}

/// Writes the record. A failed write is logged and reported, not returned:
/// the client is served all the same, and the next request asks again.
async fn store<S: Storage + ?Sized, U: ?Sized>(
    engine: &Shared<S, U>,
    key: &RecordKey,
    learned: &Learned,
) {
    let written = match serde_json::to_vec(learned) {
        Ok(bytes) => {
            engine
                .storage
                .record_put(key, Record::new(bytes), RecordWrite::Overwrite)
                .await
        }
        Err(e) => Err(crate::Error::Storage {
            backend: "records",
            message: "cannot encode a referrers record".to_owned(),
            source: Some(Box::new(e)),
        }),
    };
    if let Err(e) = written {
        // Kept under the tag rules, so reported as a tag write.
        engine.write_failed(StorageOperation::TagWrite, &e);
    }
}

fn respond(
    learned: Learned,
    outcome: CacheOutcome,
    artifact_type: Option<&str>,
) -> ReferrersResponse {
    ReferrersResponse {
        referrers: referrers::filtered(learned.referrers, artifact_type),
        source: learned.source,
        outcome,
    }
}
