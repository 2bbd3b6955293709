//! [`BlobScript`]: how [`FakeUpstream`](super::FakeUpstream) serves one blob,
//! including the ways a real peer or the link to it misbehaves.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::storage::ByteStream;
use crate::upstream::{BlobRange, FetchedRange};
use crate::{Error, Result};

/// How a [`BlobScript::cut_every`] cut ends an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// The connection is reset: the body fails as unavailable.
    Reset,
    /// The connection closes cleanly before the announced length.
    Eof,
    /// The body stalls: it fails as a read timeout.
    Stall,
}

/// How [`FakeUpstream`](super::FakeUpstream) serves one blob: the bytes, the
/// chunking, and the ways a real peer misbehaves. Clones share the count of
/// answers given, which the per-answer faults go by.
#[derive(Debug, Clone)]
pub struct BlobScript {
    pub(super) bytes: Bytes,
    chunk: usize,
    pub(super) announced: Option<u64>,
    truncate_at: Option<usize>,
    reset_at: Option<usize>,
    gate: Option<Arc<Semaphore>>,
    pace: Option<Duration>,
    pub(super) fail: Option<(UpstreamErrorKind, Duration)>,
    cut: Option<(usize, Cut, usize)>,
    ignore_ranges: bool,
    etags: Option<(String, usize, String)>,
    ranged_total: Option<u64>,
    failed_resumes: Option<(usize, UpstreamErrorKind)>,
    max_open: Option<usize>,
    open: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    answers: Arc<AtomicUsize>,
    resumes: Arc<AtomicUsize>,
    sent: Arc<AtomicU64>,
}

impl BlobScript {
    /// `bytes`, sent in 1 KiB chunks with a correct `Content-Length`.
    pub fn new(bytes: &[u8]) -> Self {
        BlobScript {
            bytes: Bytes::copy_from_slice(bytes),
            chunk: 1024,
            announced: Some(bytes.len() as u64),
            truncate_at: None,
            reset_at: None,
            gate: None,
            pace: None,
            fail: None,
            cut: None,
            ignore_ranges: false,
            etags: None,
            ranged_total: None,
            failed_resumes: None,
            max_open: None,
            open: Arc::default(),
            refused: Arc::default(),
            answers: Arc::default(),
            resumes: Arc::default(),
            sent: Arc::default(),
        }
    }

    /// Sends chunks of `chunk` bytes.
    pub fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Announces `size` as the `Content-Length` (`None`: no length at all).
    pub fn announce(mut self, size: Option<u64>) -> Self {
        self.announced = size;
        self
    }

    /// Ends every answer cleanly at byte `at` of the blob: a truncated answer
    /// that asking again does not mend.
    pub fn truncate_at(mut self, at: usize) -> Self {
        self.truncate_at = Some(at);
        self
    }

    /// Fails every answer at byte `at` of the blob: a connection reset that
    /// asking again does not mend.
    pub fn reset_at(mut self, at: usize) -> Self {
        self.reset_at = Some(at);
        self
    }

    /// Cuts each of the first `answers` answers (`usize::MAX`: every one)
    /// after `bytes` bytes of its own body, as a link that drops every
    /// connection after a fixed number of bytes does.
    pub fn cut_every(mut self, bytes: usize, how: Cut, answers: usize) -> Self {
        self.cut = Some((bytes, how, answers));
        self
    }

    /// Answers a ranged GET with the whole blob (`200`), as an upstream
    /// without range support does.
    pub fn ignore_ranges(mut self) -> Self {
        self.ignore_ranges = true;
        self
    }

    /// Sends `etag` with the first `answers` answers and `then` with the
    /// later ones: the entity changed. A ranged GET whose `If-Range` is not
    /// the current tag gets the whole blob, as HTTP says.
    pub fn etags(mut self, etag: &str, answers: usize, then: &str) -> Self {
        self.etags = Some((etag.to_owned(), answers, then.to_owned()));
        self
    }

    /// Reports `total` as the length in every `Content-Range`.
    pub fn ranged_total(mut self, total: u64) -> Self {
        self.ranged_total = Some(total);
        self
    }

    /// Fails the first `count` ranged GETs with `kind` before any byte
    /// (`Unavailable` for a `503`).
    pub fn fail_resumes(mut self, count: usize, kind: UpstreamErrorKind) -> Self {
        self.failed_resumes = Some((count, kind));
        self
    }

    /// Refuses (`429`) a GET while `answers` answers are still being read: an
    /// upstream that caps connections per client.
    pub fn max_open(mut self, answers: usize) -> Self {
        self.max_open = Some(answers);
        self
    }

    /// GETs refused by [`max_open`](Self::max_open) so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Each chunk of every answer comes `delay` after the one before: a slow
    /// link, paced per connection.
    pub fn paced(mut self, delay: Duration) -> Self {
        self.pace = Some(delay);
        self
    }

    /// Each chunk waits for one permit of `gate`, so a test controls the pace.
    pub fn gated(mut self, gate: &Arc<Semaphore>) -> Self {
        self.gate = Some(Arc::clone(gate));
        self
    }

    /// Answers the GET with `kind` after `delay` instead of the bytes: a
    /// repository that does not have the blob (`NotFound`), refuses
    /// (`Denied`), or never answers (`Timeout` after a long delay).
    pub fn fail_after(mut self, kind: UpstreamErrorKind, delay: Duration) -> Self {
        self.fail = Some((kind, delay));
        self
    }

    /// Body bytes sent so far, over every answer (clones share the count).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// The whole blob as scripted (before truncation).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The answer to a GET of `range`, as a registry behind this script's
    /// link would give it.
    pub(super) fn answer(&self, range: &BlobRange) -> Result<FetchedRange> {
        let max_open = self.max_open.unwrap_or(usize::MAX);
        if self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max_open).then_some(n + 1)
            })
            .is_err()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(UpstreamError::new(
                UpstreamErrorKind::TooManyRequests,
                "fake",
                "too many connections",
            )
            .into());
        }
        let open = OpenAnswer(Arc::clone(&self.open));
        let index = self.answers.fetch_add(1, Ordering::SeqCst);
        if range.offset > 0 {
            let resume = self.resumes.fetch_add(1, Ordering::SeqCst);
            if let Some((_, kind)) = self.failed_resumes.filter(|(n, _)| resume < *n) {
                drop(open);
                return Err(UpstreamError::new(kind, "fake", "scripted resume failure").into());
            }
        }
        let etag = self
            .etags
            .as_ref()
            .map(|(first, n, then)| if index < *n { first } else { then }.clone());
        let same_entity = match (&range.if_range, &etag) {
            (Some(asked), Some(current)) => asked == current,
            _ => true,
        };
        let ranged = range.offset > 0 || range.end.is_some();
        let honoured = ranged && !self.ignore_ranges && same_entity;
        let (start, total) = if honoured {
            let total = self.ranged_total.unwrap_or(self.bytes.len() as u64);
            (range.offset, Some(total))
        } else {
            (0, self.announced)
        };
        let start_at = usize::try_from(start).unwrap_or(usize::MAX);
        let cut = self
            .cut
            .filter(|(_, _, answers)| index < *answers)
            .map(|(after, how, _)| (start_at.saturating_add(after), how));
        let until = range
            .end
            .filter(|_| honoured)
            .and_then(|end| usize::try_from(end).ok());
        // The answer counts as open until its body is dropped.
        let stream = self
            .body(start_at, until, cut)
            .map(move |item| {
                let _open = &open;
                item
            })
            .boxed();
        let end = honoured.then(|| {
            let len = self.bytes.len() as u64;
            range.end.map_or(len, |end| end.min(len))
        });
        Ok(FetchedRange::partial(start, total, stream)
            .with_end(end)
            .with_etag(etag))
    }

    /// The body from byte `from` to `until` (or the end), cut at byte `cut`
    /// of the blob.
    pub(super) fn body(
        &self,
        from: usize,
        until: Option<usize>,
        cut: Option<(usize, Cut)>,
    ) -> ByteStream {
        let state = (self.clone(), from.min(self.bytes.len()));
        futures::stream::unfold(state, move |(script, at)| async move {
            let end = script
                .truncate_at
                .unwrap_or(script.bytes.len())
                .min(until.unwrap_or(usize::MAX));
            if at >= end {
                return None;
            }
            if let Some(delay) = script.pace {
                tokio::time::sleep(delay).await;
            }
            if let Some(gate) = &script.gate {
                // A closed gate ends the body like a dropped connection.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            let failure = |kind, message| {
                let error: Error = UpstreamError::new(kind, "fake", message).into();
                Some((Err(error), (script.clone(), usize::MAX)))
            };
            if script.reset_at.is_some_and(|r| at >= r) {
                return failure(UpstreamErrorKind::Unavailable, "connection reset");
            }
            let mut next = (at + script.chunk).min(end);
            if let Some((cut_at, how)) = cut {
                match how {
                    _ if at < cut_at => next = next.min(cut_at),
                    Cut::Reset => {
                        return failure(UpstreamErrorKind::Unavailable, "connection reset")
                    }
                    Cut::Stall => return failure(UpstreamErrorKind::Timeout, "body stalled"),
                    Cut::Eof => return None,
                }
            }
            let chunk = script.bytes.slice(at..next);
            script.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            Some((Ok(chunk), (script, next)))
        })
        .boxed()
    }
}

/// One answer being read, for [`BlobScript::max_open`].
#[derive(Debug)]
struct OpenAnswer(Arc<AtomicUsize>);

impl Drop for OpenAnswer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
