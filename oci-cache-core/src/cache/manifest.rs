//! Manifests: immutable by digest, revalidated by tag, negotiated by `Accept`.
//!
//! A tag record always holds upstream's answer to the *broad* `Accept` (all
//! four current manifest types), so every client that accepts the recorded
//! media type can be served from it. A client that does not accept it (say, a
//! Docker manifest-only client and a multi-platform index) goes upstream with
//! its own `Accept`; what that returns is stored by digest but never recorded
//! under the tag, so it cannot leak to other clients.
//!
//! Every upstream fetch runs as a single flight keyed by (registry,
//! repository, reference, upstream `Accept`): concurrent requests make one
//! upstream request, and the fetch finishes and stores even if the clients left.
//!
//! A `HEAD` on a manifest not held is answered from upstream's `HEAD` and
//! stores nothing: without the body there is nothing to verify.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::accept::AcceptSet;
use super::{ManifestResponse, Shared};
use crate::digest::{Digest, DigestAlgorithm};
use crate::observe::CacheOutcome;
use crate::reference::{ManifestRef, Registry, Repository, Tag};
use crate::storage::{Storage, StoredManifest, TagKey, TagRecord};
use crate::upstream::{FetchedManifest, Upstream};
use crate::{Error, ErrorChain, Result, UpstreamErrorKind};

/// What a manifest `HEAD` answers: the headers of the manifest, no body.
#[derive(Debug, Clone)]
pub struct ManifestHeadResponse {
    /// `Docker-Content-Digest` to send.
    pub digest: Digest,
    /// `Content-Type` to send.
    pub media_type: String,
    /// `Content-Length` to send: the size of the manifest body.
    pub size: u64,
    /// How it was obtained ([`CacheOutcome::Miss`] for an answer taken from
    /// upstream's `HEAD`, which stores nothing).
    pub outcome: CacheOutcome,
}

/// What one manifest flight produced.
#[derive(Debug, Clone)]
pub(super) struct Served {
    manifest: StoredManifest,
    outcome: CacheOutcome,
}

/// Single-flight key: registry, repository, reference, `Accept` sent upstream.
pub(super) type FlightKey = (Registry, Repository, ManifestRef, Vec<String>);

/// The whole manifest request: local first, upstream as needed.
pub(super) async fn manifest<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    reference: &ManifestRef,
    accept: &AcceptSet,
) -> Result<ManifestResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    match reference {
        ManifestRef::Digest(digest) => {
            by_digest(engine, registry, repository, digest, accept).await
        }
        ManifestRef::Tag(tag) => by_tag(engine, registry, repository, tag, accept).await,
    }
}

/// A manifest `HEAD`: from storage when held (a digest, or a fresh tag),
/// else from upstream's `HEAD` without downloading the body. Nothing learned
/// from a `HEAD` is stored: it carries no bytes to verify. A stale or
/// unacceptable tag record goes the `GET` way, whose revalidation is itself a
/// `HEAD` and downloads only a moved tag. An upstream `HEAD` answer that is
/// incomplete or unusable goes the `GET` way too.
pub(super) async fn manifest_head<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    reference: &ManifestRef,
    accept: &AcceptSet,
) -> Result<ManifestHeadResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let held = match reference {
        ManifestRef::Digest(digest) => engine.manifest_get(digest).await?,
        ManifestRef::Tag(tag) => {
            let key = TagKey {
                upstream: registry.clone(),
                repository: repository.clone(),
                tag: tag.clone(),
            };
            match engine.storage.tag_get(&key).await? {
                Some(record) if is_fresh(&record, &key, engine) => {
                    engine.manifest_get(&record.digest).await?
                }
                Some(_) => {
                    let full = manifest(engine, registry, repository, reference, accept).await?;
                    return Ok(head_of(full));
                }
                None => None,
            }
        }
    };
    if let Some(held) = held.filter(|m| accept.accepts(&m.media_type)) {
        return Ok(head_of(respond(held, CacheOutcome::Hit)));
    }
    // The same `Accept` a `GET` would send, so both see the same answer.
    let upstream_accept = match reference {
        ManifestRef::Tag(_) if accept.is_broad() => super::accept_all_known(),
        _ => accept.types().to_vec(),
    };
    match engine
        .upstream
        .manifest_head(registry, repository, reference, &upstream_accept)
        .await
    {
        Ok(head) => {
            let limit = engine.options.max_manifest_size;
            if let Some(answer) = head_answer(head, reference, accept, limit) {
                debug!(digest = %answer.digest, %registry, %repository, "manifest HEAD answered from upstream's HEAD");
                return Ok(answer);
            }
        }
        // An answer we cannot use (a 405, no Content-Type): a GET may do.
        Err(Error::Upstream(e)) if e.kind() == UpstreamErrorKind::Invalid => {
            debug!(%registry, %repository, error = %ErrorChain(&e), "upstream manifest HEAD unusable; trying GET");
        }
        // Not found, down, refused, offline: a GET would fare no better.
        Err(e) => return Err(e),
    }
    let full = manifest(engine, registry, repository, reference, accept).await?;
    Ok(head_of(full))
}

/// Upstream's `HEAD` as the answer, when complete: a digest (the one asked
/// for, by digest), a size within `limit` and a type the client accepts.
/// `None` sends the request the `GET` way, which verifies (and refuses what
/// it must).
fn head_answer(
    head: crate::upstream::ManifestHead,
    reference: &ManifestRef,
    accept: &AcceptSet,
    limit: u64,
) -> Option<ManifestHeadResponse> {
    let digest = head.digest?;
    let size = head.size.filter(|size| *size <= limit)?;
    if let ManifestRef::Digest(asked) = reference {
        if *asked != digest {
            return None;
        }
    }
    if head.media_type.is_empty() || !accept.accepts(&head.media_type) {
        return None;
    }
    Some(ManifestHeadResponse {
        digest,
        media_type: head.media_type,
        size,
        outcome: CacheOutcome::Miss,
    })
}

fn head_of(full: ManifestResponse) -> ManifestHeadResponse {
    ManifestHeadResponse {
        size: full.bytes.len() as u64,
        digest: full.digest,
        media_type: full.media_type,
        outcome: full.outcome,
    }
}

async fn by_digest<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    accept: &AcceptSet,
) -> Result<ManifestResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let cached = engine.manifest_get(digest).await?;
    if let Some(manifest) = &cached {
        if accept.accepts(&manifest.media_type) {
            return Ok(respond(manifest.clone(), CacheOutcome::Hit));
        }
        debug!(%digest, media_type = %manifest.media_type, "cached manifest not acceptable; asking upstream");
    }
    // By digest the client's own Accept goes upstream verbatim (empty = all known).
    let upstream_accept = accept.types().to_vec();
    let key: FlightKey = (
        registry.clone(),
        repository.clone(),
        ManifestRef::Digest(digest.clone()),
        upstream_accept.clone(),
    );
    let task_engine = Arc::clone(engine);
    let (registry, repository, expected) = (registry.clone(), repository.clone(), digest.clone());
    let (result, started) = engine
        .manifest_flights
        .run(key, move || async move {
            let fetched = task_engine
                .upstream
                .manifest_get(
                    &registry,
                    &repository,
                    &ManifestRef::Digest(expected.clone()),
                    &upstream_accept,
                )
                .await?;
            let manifest = verify(fetched, Some(&expected), &task_engine)?;
            task_engine.manifest_put(&manifest).await;
            info!(digest = %manifest.digest, %registry, %repository, "manifest stored");
            Ok(Served {
                manifest,
                outcome: CacheOutcome::Miss,
            })
        })
        .await;
    match (result, cached) {
        (Ok(served), _) => deliver(served, started, accept),
        (Err(e), Some(manifest)) => {
            debug!(%digest, error = %ErrorChain(&e), "upstream failed for a manifest the client does not accept");
            Err(Error::NotAcceptable {
                media_type: manifest.media_type,
            })
        }
        (Err(e), None) => Err(e),
    }
}

async fn by_tag<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    tag: &Tag,
    accept: &AcceptSet,
) -> Result<ManifestResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let key = TagKey {
        upstream: registry.clone(),
        repository: repository.clone(),
        tag: tag.clone(),
    };
    let record = engine.storage.tag_get(&key).await?;
    let cached = match &record {
        Some(record) => engine.manifest_get(&record.digest).await?,
        None => None,
    };
    match (record, cached) {
        (Some(record), Some(manifest)) if accept.accepts(&manifest.media_type) => {
            if is_fresh(&record, &key, engine) {
                return Ok(respond(manifest, CacheOutcome::Hit));
            }
            let (served, started) = broad_flight(engine, &key, Some((record, manifest))).await;
            let served = served?;
            if accept.accepts(&served.manifest.media_type) {
                return deliver(served, started, accept);
            }
            narrow(engine, &key, accept).await
        }
        (Some(_), Some(manifest)) => {
            debug!(tag = %key.tag, media_type = %manifest.media_type, "cached tag not acceptable; asking upstream");
            narrow(engine, &key, accept).await
        }
        _ if accept.is_broad() => {
            let (served, started) = broad_flight(engine, &key, None).await;
            deliver(served?, started, accept)
        }
        _ => narrow(engine, &key, accept).await,
    }
}

fn is_fresh<S: ?Sized, U: ?Sized>(record: &TagRecord, key: &TagKey, engine: &Shared<S, U>) -> bool {
    let ttl = engine.options.tag_ttl;
    // Whatever the clocks, this replica checks a tag at most once per TTL.
    checked_within(record.checked_at, ttl) || engine.revalidated.within(key, ttl)
}

/// Whether what upstream said at `checked_at` (a tag, a referrers list) is
/// still trusted without asking again. Another replica's clock may be
/// ahead: a record up to a TTL in the future is fresh (trusted at most two
/// TTLs); further ahead (a clock moved back) it is stale: cheap to
/// revalidate, wrong to trust forever.
pub(super) fn checked_within(checked_at: SystemTime, ttl: Duration) -> bool {
    match SystemTime::now().duration_since(checked_at) {
        Ok(age) => age < ttl,
        Err(ahead) => ahead.duration() <= ttl,
    }
}

/// Resolves a tag with the broad `Accept` and keeps the tag record up to date.
/// With a cached answer (`known`) it revalidates with a HEAD and falls back to
/// the cached answer when upstream fails; without one it GETs.
async fn broad_flight<S, U>(
    engine: &Arc<Shared<S, U>>,
    key: &TagKey,
    known: Option<(TagRecord, StoredManifest)>,
) -> (Result<Served>, bool)
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let broad = super::accept_all_known();
    let flight_key: FlightKey = (
        key.upstream.clone(),
        key.repository.clone(),
        ManifestRef::Tag(key.tag.clone()),
        broad.clone(),
    );
    let task_engine = Arc::clone(engine);
    let key = key.clone();
    engine
        .manifest_flights
        .run(flight_key, move || async move {
            match known {
                Some((record, manifest)) => {
                    match revalidate(&task_engine, &key, &broad, &record).await {
                        Ok(served) => Ok(served),
                        Err(e) => {
                            warn!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag, error = %ErrorChain(&e),
                                "tag revalidation failed; serving the cached manifest (stale-if-error)");
                            Ok(Served {
                                manifest,
                                outcome: CacheOutcome::Stale,
                            })
                        }
                    }
                }
                None => {
                    let manifest = get_tag(&task_engine, &key, &broad, None).await?;
                    record_tag(&task_engine, &key, &manifest).await;
                    Ok(Served {
                        manifest,
                        outcome: CacheOutcome::Miss,
                    })
                }
            }
        })
        .await
}

/// HEAD upstream; same digest → refresh `checked_at`; new digest → fetch (or
/// find in storage) the new manifest and move the tag.
async fn revalidate<S, U>(
    engine: &Arc<Shared<S, U>>,
    key: &TagKey,
    accept: &[String],
    record: &TagRecord,
) -> Result<Served>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let reference = ManifestRef::Tag(key.tag.clone());
    let head = engine
        .upstream
        .manifest_head(&key.upstream, &key.repository, &reference, accept)
        .await?;
    let stored = match &head.digest {
        Some(digest) => engine.manifest_get(digest).await?,
        None => None,
    };
    let (manifest, outcome) = match stored {
        Some(manifest) => (manifest, CacheOutcome::Revalidated),
        None => {
            let manifest = get_tag(engine, key, accept, head.digest.as_ref()).await?;
            let outcome = if manifest.digest == record.digest {
                CacheOutcome::Revalidated
            } else {
                CacheOutcome::Miss
            };
            (manifest, outcome)
        }
    };
    if manifest.digest != record.digest {
        info!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag,
            from = %record.digest, to = %manifest.digest, "tag moved upstream");
    }
    engine.revalidated.checked(key, engine.options.tag_ttl);
    // A record that changed while this check ran holds another replica's
    // check, made after this one began: it is kept (compared by content,
    // not by the two replicas' clocks).
    match engine.storage.tag_get(key).await {
        Ok(Some(now)) if now != *record => {
            debug!(tag = %key.tag, "another replica revalidated this tag meanwhile; keeping its record");
        }
        _ => record_tag(engine, key, &manifest).await,
    }
    Ok(Served { manifest, outcome })
}

/// GETs a manifest by tag, verifies it (against `expected`, from a HEAD, when
/// given) and stores it by digest.
async fn get_tag<S, U>(
    engine: &Arc<Shared<S, U>>,
    key: &TagKey,
    accept: &[String],
    expected: Option<&Digest>,
) -> Result<StoredManifest>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let fetched = engine
        .upstream
        .manifest_get(
            &key.upstream,
            &key.repository,
            &ManifestRef::Tag(key.tag.clone()),
            accept,
        )
        .await?;
    let manifest = verify(fetched, expected, engine)?;
    engine.manifest_put(&manifest).await;
    info!(digest = %manifest.digest, upstream = %key.upstream, repository = %key.repository, tag = %key.tag, "manifest stored");
    Ok(manifest)
}

async fn record_tag<S: Storage + ?Sized, U: ?Sized>(
    engine: &Shared<S, U>,
    key: &TagKey,
    manifest: &StoredManifest,
) {
    let record = TagRecord {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        checked_at: SystemTime::now(),
    };
    match engine.storage.tag_put(key, &record).await {
        Ok(()) => engine
            .catalog
            .insert(super::catalog_name(&key.upstream, &key.repository)),
        // The client still gets a verified manifest; the next request asks again.
        Err(e) => engine.write_failed(crate::observe::StorageOperation::TagWrite, &e),
    }
}

/// A client whose `Accept` differs from the recorded answer: HEAD with its
/// `Accept`, serve from storage when the digest is there, else GET. The result
/// is stored by digest only, never recorded under the tag.
async fn narrow<S, U>(
    engine: &Arc<Shared<S, U>>,
    key: &TagKey,
    accept: &AcceptSet,
) -> Result<ManifestResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let client_accept = accept.types().to_vec();
    let flight_key: FlightKey = (
        key.upstream.clone(),
        key.repository.clone(),
        ManifestRef::Tag(key.tag.clone()),
        client_accept.clone(),
    );
    let task_engine = Arc::clone(engine);
    let key = key.clone();
    let (result, started) = engine
        .manifest_flights
        .run(flight_key, move || async move {
            let reference = ManifestRef::Tag(key.tag.clone());
            // A failed or digest-less HEAD just means: GET it.
            let head = task_engine
                .upstream
                .manifest_head(&key.upstream, &key.repository, &reference, &client_accept)
                .await;
            if let Ok(Some(digest)) = head.as_ref().map(|h| h.digest.as_ref()) {
                if let Some(manifest) = task_engine.manifest_get(digest).await? {
                    return Ok(Served {
                        manifest,
                        outcome: CacheOutcome::Revalidated,
                    });
                }
            }
            let expected = head.ok().and_then(|h| h.digest);
            let manifest = get_tag(&task_engine, &key, &client_accept, expected.as_ref()).await?;
            Ok(Served {
                manifest,
                outcome: CacheOutcome::Miss,
            })
        })
        .await;
    deliver(result?, started, accept)
}

/// Checks a fetched manifest: size cap, digest (`expected` if given, else the
/// digest upstream claimed, else sha256 of the bytes), media type.
fn verify<S: ?Sized, U: ?Sized>(
    fetched: FetchedManifest,
    expected: Option<&Digest>,
    engine: &Shared<S, U>,
) -> Result<StoredManifest> {
    let limit = engine.options.max_manifest_size;
    let size = fetched.bytes.len() as u64;
    if size > limit {
        return Err(Error::TooLarge {
            what: "manifest".into(),
            limit,
            actual: size,
        });
    }
    // A client must verify against the digest it asked for; upstream may report
    // a different algorithm in its header (PROTOCOL §2).
    let target = expected.or(fetched.head.digest.as_ref());
    let algorithm = target.map_or(DigestAlgorithm::Sha256, Digest::algorithm);
    let digest = Digest::compute(algorithm, &fetched.bytes);
    if let Some(target) = target {
        if *target != digest {
            return Err(Error::DigestMismatch {
                expected: target.clone(),
                actual: digest,
            });
        }
    }
    let media_type = media_type(&fetched);
    Ok(StoredManifest {
        digest,
        media_type,
        bytes: fetched.bytes,
    })
}

/// The `Content-Type` without parameters; the JSON `mediaType` when upstream
/// sent none.
fn media_type(fetched: &FetchedManifest) -> String {
    let header = fetched
        .head
        .media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !header.is_empty() {
        return header.to_string();
    }
    #[derive(serde::Deserialize)]
    struct MediaTypeField {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<MediaTypeField>(&fetched.bytes)
        .ok()
        .and_then(|m| m.media_type)
        .unwrap_or_default()
}

fn respond(manifest: StoredManifest, outcome: CacheOutcome) -> ManifestResponse {
    ManifestResponse {
        digest: manifest.digest,
        media_type: manifest.media_type,
        bytes: manifest.bytes,
        outcome,
    }
}

/// A flight's result for one client: refused when the client does not accept
/// the type upstream answered with; a miss is "coalesced" for the joiners.
fn deliver(served: Served, started: bool, accept: &AcceptSet) -> Result<ManifestResponse> {
    if !accept.accepts(&served.manifest.media_type) {
        return Err(Error::NotAcceptable {
            media_type: served.manifest.media_type,
        });
    }
    let outcome = match served.outcome {
        CacheOutcome::Miss if !started => CacheOutcome::Coalesced,
        outcome => outcome,
    };
    Ok(respond(served.manifest, outcome))
}
