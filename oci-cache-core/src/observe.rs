//! Events for metrics and logs: an [`Observer`] the embedder implements.
//!
//! The engine reports blob fills; the HTTP side reports every request (once
//! its body has ended, with the bytes actually sent) and every upstream
//! attempt. Counters such as requests by route, cache result and status,
//! bytes served, upstream bytes and outcomes per endpoint, fills in flight,
//! coalesced and stale answers, 429 throttles and breaker state are all
//! derivable from these events, so metrics and access logs are observers, not
//! code inside handlers.
//!
//! Every method has a no-op default, so an observer implements only what it
//! needs, and new events do not break it. Methods are called inline on the
//! request path: they must be quick and must not block (update an atomic,
//! send to a channel).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use oci_cache_core::observe::{Observer, RequestEvent};
//!
//! #[derive(Debug, Default)]
//! struct ServedBytes(AtomicU64);
//!
//! impl Observer for ServedBytes {
//!     fn request(&self, event: &RequestEvent) {
//!         self.0.fetch_add(event.bytes_sent, Ordering::Relaxed);
//!     }
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{UpstreamErrorKind, WriteFailure};
use crate::reference::Registry;

/// How a request was answered, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from storage without asking upstream.
    Hit,
    /// Fetched from upstream (and stored).
    Miss,
    /// Fed from another request's in-flight fetch.
    Coalesced,
    /// A cached tag was confirmed (or updated) with a HEAD upstream.
    Revalidated,
    /// Upstream failed; a cached tag was served anyway (stale-if-error).
    Stale,
}

impl CacheOutcome {
    /// `hit`, `miss`, `coalesced`, `revalidated` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// Receives events from the engine and the HTTP service.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A request was answered and its body has ended (or was cut).
    fn request(&self, _event: &RequestEvent) {}

    /// One attempt on one upstream endpoint finished (headers received or
    /// failed), or its blob body ended.
    fn upstream(&self, _event: &UpstreamEvent) {}

    /// A blob fill started, resumed after a cut connection, or finished.
    fn fill(&self, _event: &FillEvent) {}

    /// An endpoint's circuit breaker opened or closed.
    fn breaker(&self, _event: &BreakerEvent) {}

    /// A write to storage or to a fill's spool failed; the request was still
    /// served, only caching was skipped.
    fn storage(&self, _event: &StorageEvent) {}

    /// A token realm or redirect named by an upstream was refused because it
    /// leads outside what the endpoint is trusted with (issue 11).
    fn trust_refused(&self, _event: &TrustEvent) {}

    /// An eviction pass or a purge ended (also when it removed nothing).
    fn eviction(&self, _event: &EvictionEvent) {}

    /// A request joined or left an upstream's budget queue.
    fn budget(&self, _event: &BudgetEvent) {}

    /// An upstream told its rate-limit allowance (`ratelimit-*` headers).
    fn rate_limit(&self, _event: &RateLimitEvent) {}

    /// Incomplete multipart uploads a dead writer left in the bucket were aborted.
    fn uploads_aborted(&self, _event: &UploadsAbortedEvent) {}
}

/// The observer that ignores everything (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// A shared observer, as the engine and the service hold it.
pub type SharedObserver = Arc<dyn Observer>;

/// The default [`SharedObserver`]: [`NoopObserver`].
pub fn noop() -> SharedObserver {
    Arc::new(NoopObserver)
}

/// Forwards every event to each observer in turn (e.g. the access log and metrics).
#[derive(Debug, Default, Clone)]
pub struct Fanout(Vec<SharedObserver>);

impl Fanout {
    /// Observers called in this order.
    pub fn new(observers: Vec<SharedObserver>) -> Self {
        Fanout(observers)
    }
}

impl Observer for Fanout {
    fn request(&self, event: &RequestEvent) {
        self.0.iter().for_each(|o| o.request(event));
    }
    fn upstream(&self, event: &UpstreamEvent) {
        self.0.iter().for_each(|o| o.upstream(event));
    }
    fn fill(&self, event: &FillEvent) {
        self.0.iter().for_each(|o| o.fill(event));
    }
    fn breaker(&self, event: &BreakerEvent) {
        self.0.iter().for_each(|o| o.breaker(event));
    }
    fn storage(&self, event: &StorageEvent) {
        self.0.iter().for_each(|o| o.storage(event));
    }
    fn trust_refused(&self, event: &TrustEvent) {
        self.0.iter().for_each(|o| o.trust_refused(event));
    }
    fn eviction(&self, event: &EvictionEvent) {
        self.0.iter().for_each(|o| o.eviction(event));
    }
    fn budget(&self, event: &BudgetEvent) {
        self.0.iter().for_each(|o| o.budget(event));
    }
    fn rate_limit(&self, event: &RateLimitEvent) {
        self.0.iter().for_each(|o| o.rate_limit(event));
    }
    fn uploads_aborted(&self, event: &UploadsAbortedEvent) {
        self.0.iter().for_each(|o| o.uploads_aborted(event));
    }
}

/// An upstream's request budget (concurrency cap and rate) after a request
/// joined its queue or was let through.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone)]
pub struct BudgetEvent {
    /// The configured upstream.
    pub upstream: Registry,
    /// Requests waiting for the budget now.
    pub queued: usize,
    /// Set when a request was let through: how long it waited (queue and rate).
    pub waited: Option<Duration>,
}

/// An upstream's pull allowance, from its `ratelimit-limit` /
/// `ratelimit-remaining` (or `RateLimit`) response headers.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitEvent {
    /// The configured upstream.
    pub upstream: Registry,
    /// Requests allowed per window, when the upstream said.
    pub limit: Option<u64>,
    /// Requests left in the current window, when the upstream said.
    pub remaining: Option<u64>,
}

/// A request, reported when its response body has ended or was dropped.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone)]
pub struct RequestEvent {
    /// `GET`, `HEAD`…
    pub method: String,
    /// The request path as received (after any prefix a router stripped).
    pub path: String,
    /// The route name: `manifest`, `blob`, `tags`, `catalog`, `ping`,
    /// `healthz`, or `unknown` for requests that matched none.
    pub route: &'static str,
    /// The upstream the request was routed to, when it names one.
    pub upstream: Option<Registry>,
    /// How the engine answered; `None` for errors and routes without a cache.
    pub cache: Option<CacheOutcome>,
    /// The response status code.
    pub status: u16,
    /// Body bytes actually handed to the connection (not the `Content-Length`).
    pub bytes_sent: u64,
    /// From the request's arrival to the last byte of the body (or the cut).
    pub duration: Duration,
    /// False when the client went away or the body failed before its end.
    pub completed: bool,
}

/// What an upstream operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamOperation {
    /// Manifest HEAD (tag revalidation).
    ManifestHead,
    /// Manifest GET.
    ManifestGet,
    /// Blob GET (the body streams later; see [`UpstreamEvent::body_ended`]).
    BlobGet,
    /// Blob HEAD.
    BlobHead,
    /// Tag list.
    TagList,
    /// OCI 1.1 referrers list.
    Referrers,
}

impl UpstreamOperation {
    /// `manifest_head`, `manifest_get`, `blob_get`, `blob_head`, `tag_list`
    /// or `referrers`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOperation::ManifestHead => "manifest_head",
            UpstreamOperation::ManifestGet => "manifest_get",
            UpstreamOperation::BlobGet => "blob_get",
            UpstreamOperation::BlobHead => "blob_head",
            UpstreamOperation::TagList => "tag_list",
            UpstreamOperation::Referrers => "referrers",
        }
    }
}

/// How an upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamOutcome {
    /// Answered with success.
    Ok,
    /// Failed with this kind (`Skipped` when the breaker or offline mode kept
    /// the request from going out; `TooManyRequests` for a 429).
    Failed(UpstreamErrorKind),
}

impl UpstreamOutcome {
    /// `ok`, or the error kind's label (`not_found`, `unavailable`…).
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Failed(kind) => kind.as_str(),
        }
    }
}

/// One attempt on one endpoint of an upstream's chain.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone)]
pub struct UpstreamEvent {
    /// The configured upstream (registry name).
    pub upstream: Registry,
    /// The endpoint URL tried.
    pub endpoint: String,
    /// What was asked for.
    pub operation: UpstreamOperation,
    /// How it ended.
    pub outcome: UpstreamOutcome,
    /// Body bytes received: the whole manifest or tag list, or for a blob body
    /// that ended ([`body_ended`](Self::body_ended)) the bytes streamed; 0 for
    /// a blob attempt's headers.
    pub bytes: u64,
    /// Until the response headers (or the failure); for a blob body, until its end.
    pub duration: Duration,
    /// True for the event sent when a blob body from this endpoint ended
    /// (`outcome` says whether it ended cleanly). Every `BlobGet` attempt that
    /// succeeded is followed by exactly one such event.
    pub body_ended: bool,
}

/// A blob fill's start or end.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FillEvent {
    /// The blob.
    pub digest: Digest,
    /// The upstream it is fetched from.
    pub upstream: Registry,
    /// What happened.
    pub phase: FillPhase,
}

impl FillEvent {
    /// An event for `digest` fetched from `upstream` (for observers' own tests).
    pub fn new(digest: Digest, upstream: Registry, phase: FillPhase) -> Self {
        FillEvent {
            digest,
            upstream,
            phase,
        }
    }
}

/// The phase a [`FillEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FillPhase {
    /// The fill task started (before the upstream request).
    Started,
    /// Verified and stored: `bytes` long.
    Stored {
        /// Blob size.
        bytes: u64,
    },
    /// Nothing was stored; the message says why (with its causes).
    Failed {
        /// The error and its cause chain.
        error: String,
    },
    /// The upstream connection was cut after `offset` bytes and upstream
    /// honoured a `Range: bytes=offset-`: the fill continues from there.
    Resumed {
        /// Bytes hashed and staged before the cut.
        offset: u64,
    },
    /// The upstream connection was cut after `offset` bytes and upstream
    /// sent the whole blob again: those `offset` bytes crossed the link
    /// twice (they are read and dropped; the digest still covers every byte).
    Restarted {
        /// Bytes hashed and staged before the cut.
        offset: u64,
        /// Why upstream started again from byte 0.
        reason: RestartReason,
    },
    /// On a bucket shared by several replicas: what the fill did about the
    /// digest's fill lease (before any byte, or after the replica it
    /// streamed from went away). Not an end of the fill.
    Lease {
        /// What happened.
        outcome: LeaseOutcome,
    },
    /// Another replica stored the blob: this fill relayed it, verified
    /// (`bytes` long), and stored no second copy. An end of the fill, like
    /// [`Stored`](Self::Stored).
    Relayed {
        /// Blob size.
        bytes: u64,
    },
}

/// How a fill on a bucket shared by several replicas dealt with the fill
/// lease of its digest ([`FillPhase::Lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseOutcome {
    /// This replica took the lease: it fetches upstream and stores.
    Acquired,
    /// Another replica holds the lease: this one streams that replica's
    /// fill and re-hashes it, fetching nothing upstream.
    Peer,
    /// The holder went away (its stream broke, or it never answered) and
    /// this one took its lease over: it goes on upstream from the byte it
    /// had reached.
    Takeover,
    /// No lease could be used (leases off, a failed or slow lease call, an
    /// unreachable holder): this replica fills alone, as without a fleet.
    Unavailable,
    /// The holder sent wrong bytes to this replica before (within the last
    /// ten minutes): this replica fills alone rather than relay it again.
    BadPeer,
}

impl LeaseOutcome {
    /// `acquired`, `peer`, `takeover`, `unavailable` or `bad_peer`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Acquired => "acquired",
            LeaseOutcome::Peer => "peer",
            LeaseOutcome::Takeover => "takeover",
            LeaseOutcome::Unavailable => "unavailable",
            LeaseOutcome::BadPeer => "bad_peer",
        }
    }
}

/// Why a cut fill was fetched again from byte 0 ([`FillPhase::Restarted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// Upstream answered the ranged GET with the whole blob (`200`), or the
    /// upstream client knows no ranges.
    RangeIgnored,
    /// Upstream's entity changed since the bytes before the cut (another
    /// `ETag`, or another total length in `Content-Range`).
    EntityChanged,
}

impl RestartReason {
    /// `range_ignored` or `entity_changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::RangeIgnored => "range_ignored",
            RestartReason::EntityChanged => "entity_changed",
        }
    }
}

/// A circuit breaker changing state.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone)]
pub struct BreakerEvent {
    /// The endpoint URL.
    pub endpoint: String,
    /// True when it opened (the endpoint is skipped), false when it closed.
    pub open: bool,
}

/// A write that failed while the engine kept serving (degraded caching).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StorageEvent {
    /// What was being written.
    pub operation: StorageOperation,
    /// Disk full, read-only, or other: what a metric counts by.
    pub reason: WriteFailure,
    /// The error and its cause chain.
    pub error: String,
}

impl StorageEvent {
    /// An event for a failed `operation`.
    pub fn new(operation: StorageOperation, reason: WriteFailure, error: String) -> Self {
        StorageEvent {
            operation,
            reason,
            error,
        }
    }
}

/// What a [`StorageEvent`]'s failed write was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOperation {
    /// Committing a verified blob.
    BlobWrite,
    /// Storing a verified manifest.
    ManifestWrite,
    /// Recording where a tag points.
    TagWrite,
    /// The spool file of a blob fill (late and slow clients read from it).
    Spool,
}

impl StorageOperation {
    /// `blob_write`, `manifest_write`, `tag_write` or `spool`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageOperation::BlobWrite => "blob_write",
            StorageOperation::ManifestWrite => "manifest_write",
            StorageOperation::TagWrite => "tag_write",
            StorageOperation::Spool => "spool",
        }
    }
}

/// What a refused [`TrustEvent`] target was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustTarget {
    /// A token server named by a `WWW-Authenticate` challenge.
    Realm,
    /// A redirect (or tag-list `Link`) of a manifest or tag-list request.
    ApiRedirect,
    /// A redirect of a blob download.
    BlobRedirect,
}

impl TrustTarget {
    /// `realm`, `api_redirect` or `blob_redirect`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustTarget::Realm => "realm",
            TrustTarget::ApiRedirect => "api_redirect",
            TrustTarget::BlobRedirect => "blob_redirect",
        }
    }
}

/// A realm or redirect an upstream named and the client refused to follow.
// Not `non_exhaustive`: oci-cache-http builds it.
#[derive(Debug, Clone)]
pub struct TrustEvent {
    /// The endpoint URL whose answer named the target.
    pub endpoint: String,
    /// The refused target's host.
    pub target_host: String,
    /// What the target was for.
    pub target: TrustTarget,
    /// Why it was refused.
    pub reason: String,
}

/// Incomplete multipart uploads of a dead writer, aborted (they are billed
/// until then).
// Not `non_exhaustive`: observers' own tests build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadsAbortedEvent {
    /// Uploads aborted.
    pub count: u64,
    /// Who found them.
    pub reason: UploadAbortReason,
}

/// Why incomplete multipart uploads were aborted ([`UploadsAbortedEvent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadAbortReason {
    /// This replica took the fill lease over from their writer.
    Takeover,
    /// Their markers were untouched for longer than the bound (a sweep at start).
    Stale,
}

impl UploadAbortReason {
    /// `takeover` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadAbortReason::Takeover => "takeover",
            UploadAbortReason::Stale => "stale",
        }
    }
}

/// The end of an eviction pass or a purge.
// Not `non_exhaustive`: observers' own tests build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionEvent {
    /// Blobs removed.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Blob bytes stored afterwards.
    pub stored_bytes: u64,
    /// Bytes of pinned and hosted content (kept whatever the cap; 0 for a purge).
    pub protected_bytes: u64,
    /// Pinned and hosted content alone is over the cap.
    pub protected_over_cap: bool,
}
