//! Upstream events for the observer: one per attempt on an endpoint, one when
//! a blob body from an endpoint ends, and breaker state changes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use oci_cache_core::observe::{
    BreakerEvent, SharedObserver, UpstreamEvent, UpstreamOperation, UpstreamOutcome,
};
use oci_cache_core::reference::Registry;
use oci_cache_core::referrers::Referrer;
use oci_cache_core::storage::ByteStream;
use oci_cache_core::upstream::{FetchedManifest, FetchedRange, ManifestHead, TagList};
use oci_cache_core::{Error as CoreError, UpstreamErrorKind};

use super::CoreResult;

/// Body bytes an attempt's result carries, for [`UpstreamEvent::bytes`].
pub(super) trait Received: Sized {
    fn body_bytes(&self) -> u64;

    /// Attaches `reporter` to a body still to be streamed (blobs).
    fn observe_body(self, _reporter: Reporter) -> Self {
        self
    }
}

impl Received for ManifestHead {
    fn body_bytes(&self) -> u64 {
        0
    }
}

impl Received for FetchedManifest {
    fn body_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Blob bytes are reported when the body ends ([`ReportedStream`]).
impl Received for FetchedRange {
    fn body_bytes(&self) -> u64 {
        0
    }

    fn observe_body(mut self, reporter: Reporter) -> Self {
        self.stream = reporter.blob_body(self.stream);
        self
    }
}

/// A blob HEAD's size.
impl Received for u64 {
    fn body_bytes(&self) -> u64 {
        0
    }
}

/// A tag list and the body bytes of all its pages.
impl Received for (TagList, u64) {
    fn body_bytes(&self) -> u64 {
        self.1
    }
}

/// A referrers list and the body bytes of all its pages.
impl Received for (Vec<Referrer>, u64) {
    fn body_bytes(&self) -> u64 {
        self.1
    }
}

/// The outcome an attempt's result stands for.
pub(super) fn outcome_of<T>(result: &CoreResult<T>) -> UpstreamOutcome {
    match result {
        Ok(_) => UpstreamOutcome::Ok,
        Err(e) => UpstreamOutcome::Failed(failure_kind(e)),
    }
}

fn failure_kind(err: &CoreError) -> UpstreamErrorKind {
    match err {
        CoreError::Upstream(e) => e.kind(),
        CoreError::TooLarge { .. } | CoreError::DigestMismatch { .. } => UpstreamErrorKind::Invalid,
        _ => UpstreamErrorKind::Unavailable,
    }
}

/// Everything an event about one endpoint needs besides its outcome.
#[derive(Debug, Clone)]
pub(super) struct Reporter {
    pub(super) observer: SharedObserver,
    pub(super) upstream: Registry,
    pub(super) endpoint: String,
    pub(super) operation: UpstreamOperation,
}

impl Reporter {
    pub(super) fn attempt(&self, outcome: UpstreamOutcome, bytes: u64, duration: Duration) {
        self.send(outcome, bytes, duration, false);
    }

    fn send(&self, outcome: UpstreamOutcome, bytes: u64, duration: Duration, body_ended: bool) {
        self.observer.upstream(&UpstreamEvent {
            upstream: self.upstream.clone(),
            endpoint: self.endpoint.clone(),
            operation: self.operation,
            outcome,
            bytes,
            duration,
            body_ended,
        });
    }

    pub(super) fn breaker(&self, open: bool) {
        self.observer.breaker(&BreakerEvent {
            endpoint: self.endpoint.clone(),
            open,
        });
    }

    /// `stream`, reporting its bytes when it ends, fails or is dropped.
    pub(super) fn blob_body(self, stream: ByteStream) -> ByteStream {
        Box::pin(ReportedStream {
            inner: stream,
            reporter: Some(self),
            bytes: 0,
            started: Instant::now(),
        })
    }
}

struct ReportedStream {
    inner: ByteStream,
    /// Taken when the end has been reported.
    reporter: Option<Reporter>,
    bytes: u64,
    started: Instant,
}

impl ReportedStream {
    fn report(&mut self, outcome: UpstreamOutcome) {
        if let Some(reporter) = self.reporter.take() {
            reporter.send(outcome, self.bytes, self.started.elapsed(), true);
        }
    }
}

impl Stream for ReportedStream {
    type Item = CoreResult<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(bytes))) => this.bytes += bytes.len() as u64,
            Poll::Ready(Some(Err(e))) => {
                let outcome = UpstreamOutcome::Failed(failure_kind(e));
                this.report(outcome);
            }
            Poll::Ready(None) => this.report(UpstreamOutcome::Ok),
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for ReportedStream {
    fn drop(&mut self) {
        // Dropped before its end: the reader gave up on the body.
        self.report(UpstreamOutcome::Failed(UpstreamErrorKind::Unavailable));
    }
}
