//! A fill's upstream body that survives cut connections.
//!
//! [`ResumingBody`] yields the blob's bytes in order. When the connection is
//! cut (reset, EOF before the announced length, read timeout, a failed answer
//! mid-body) it asks upstream again with `Range: bytes=N-`, `N` being the
//! first byte it has not yet handed to the fill: everything before `N` is
//! already hashed, staged and readable by the fill's clients, so nothing of
//! the cut shows to them. The digest check at the end still covers every
//! byte, whichever answer it came from.
//!
//! The bytes before a cut were sent with an `ETag` and a length. A resume
//! sends that `ETag` as `If-Range` (when it is a strong one) and checks the
//! answer: a `206` of the same entity continues; an upstream that ignores the
//! range (`200`) or whose entity changed (another `ETag`, another total in
//! `Content-Range`) sends the blob from byte 0 again, and the fill reads and
//! drops the bytes it already has ([`FillPhase::Restarted`], counted). It
//! keeps its own bytes rather than starting its hash over: those are the
//! bytes its clients and the staged write already have, and the final digest
//! check decides whether they, together with the rest, are the blob.
//!
//! Retries are bounded twice. Per endpoint: after [`FillRetry::attempts`]
//! attempts in a row that bring no new byte (waiting [`FillRetry::backoff`],
//! doubled each time, between them) the fill gives the endpoint up and goes
//! on with the next one of the upstream's chain, and fails after the last.
//! Per fill: every 64 KiB that arrived earns one more cut, so an upstream
//! that drips a few bytes per connection cannot keep a fill alive forever.
//! A cut after new bytes is resumed at once: the link works, it only drops.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::digest::Digest;
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::observe::{FillEvent, FillPhase, RestartReason, SharedObserver};
use crate::reference::{Registry, Repository};
use crate::storage::ByteStream;
use crate::upstream::{BlobRange, FetchedRange, Upstream};
use crate::{Error, Result};

/// Bytes that earn a fill one more cut ([module docs](self)).
const PROGRESS_PER_CUT: u64 = 64 * 1024;
/// The longest wait between two attempts, whatever the backoff or a
/// `Retry-After` say.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// How a fill retries a cut upstream connection
/// ([`CacheOptions::fill_retry`](super::super::CacheOptions::fill_retry),
/// `[cache.fill_retry]` in the config file).
///
/// ```
/// use std::time::Duration;
/// use oci_cache_core::cache::FillRetry;
///
/// let retry = FillRetry::default().with_attempts(2).with_backoff(Duration::from_millis(10));
/// assert_eq!((retry.attempts, retry.backoff), (2, Duration::from_millis(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FillRetry {
    /// Attempts in a row on one endpoint that bring no new byte before the
    /// fill moves on to the next endpoint of the chain (and fails after the
    /// last). Default 4. A connection cut after new bytes does not count.
    pub attempts: u32,
    /// The wait before the second attempt without new bytes, doubled for
    /// each further one (at most 30 s; longer when upstream's `Retry-After`
    /// asks, up to that cap). Default 250 ms.
    #[serde(with = "crate::duration")]
    pub backoff: Duration,
}

impl Default for FillRetry {
    fn default() -> Self {
        FillRetry {
            attempts: 4,
            backoff: Duration::from_millis(250),
        }
    }
}

impl FillRetry {
    /// Sets the attempts per endpoint without new bytes (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Sets the first wait between attempts without new bytes.
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The wait before the attempt after `stalled` attempts in a row without
    /// new bytes, at least what `error` (the last failure) asked for.
    fn delay(&self, stalled: u32, error: &Error) -> Duration {
        let backoff = match stalled {
            0 => Duration::ZERO,
            n => self.backoff.saturating_mul(1 << (n - 1).min(16)),
        };
        let asked = match error {
            Error::Upstream(e) => e.retry_after().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        backoff.max(asked).min(MAX_DELAY)
    }
}

/// What a fill fetches through.
pub(super) struct Target<'a, U: ?Sized> {
    pub(super) upstream: &'a U,
    pub(super) registry: &'a Registry,
    pub(super) repository: &'a Repository,
    pub(super) digest: &'a Digest,
    pub(super) observer: &'a SharedObserver,
}

impl<U: ?Sized> Clone for Target<'_, U> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<U: ?Sized> Copy for Target<'_, U> {}

/// The fill's upstream body, resumed after cuts ([module docs](self)).
pub(super) struct ResumingBody<'a, U: ?Sized> {
    target: Target<'a, U>,
    retry: FillRetry,
    /// The blob's size as the first answer announced it.
    size: Option<u64>,
    /// The byte after the last one this body yields: the end of a part
    /// (a [`segments`](super::segments) part, or the first answer's range);
    /// `None`: up to the blob's end.
    end: Option<u64>,
    /// Set while opening a part: its first GET is no resume to report.
    opening: bool,
    /// Every GET is a segment worker's [`extra`](BlobRange::extra) connection.
    extra: bool,
    /// The entity tag of the bytes so far.
    etag: Option<String>,
    /// The endpoint of the current answer, when the upstream says.
    endpoint: Option<String>,
    /// Endpoints given up on.
    avoid: Vec<String>,
    /// The current answer; `None` once the body ended.
    stream: Option<ByteStream>,
    /// Bytes handed to the fill: hashed and staged, and where a resume starts.
    pos: u64,
    /// Bytes of the current answer still to drop (sent again after a restart).
    skip: u64,
    /// `pos` when the current answer began.
    answer_start: u64,
    /// Attempts in a row without new bytes on the current endpoint.
    stalled: u32,
    /// Cuts so far, and endpoints given up on: what the budget is checked against.
    cuts: u64,
}

impl<'a, U: Upstream + ?Sized> ResumingBody<'a, U> {
    /// Asks for the whole blob, or with `probe` for its first `probe` bytes
    /// (`Range: bytes=0-(probe-1)`); fails as the first GET fails. The body
    /// then ends where the answer ends: a part ([`part_end`](Self::part_end))
    /// when upstream honoured the range, else the whole blob.
    pub(super) async fn open(
        target: Target<'a, U>,
        retry: FillRetry,
        probe: Option<u64>,
    ) -> Result<Self> {
        let first = target
            .upstream
            .blob_get_range(
                target.registry,
                target.repository,
                target.digest,
                &BlobRange::from_offset(0).with_end(probe),
            )
            .await?;
        let mut body = ResumingBody {
            target,
            retry,
            size: first.total,
            end: first.end.filter(|_| first.start == 0 && probe.is_some()),
            opening: false,
            extra: false,
            etag: first.etag.clone(),
            endpoint: None,
            avoid: Vec::new(),
            stream: None,
            pos: 0,
            skip: 0,
            answer_start: 0,
            stalled: 0,
            cuts: 0,
        };
        body.adopt(first, 0);
        Ok(body)
    }

    /// Continues a blob whose first `offset` bytes this fill already has
    /// from elsewhere (another replica's fill it relayed): one ranged GET
    /// from `offset`, checked as a resume after a cut is. `size` is what
    /// the bytes so far announced.
    pub(super) async fn open_at(
        target: Target<'a, U>,
        retry: FillRetry,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Self> {
        if offset == 0 {
            return Self::open(target, retry, None).await;
        }
        Self::open_part(target, retry, offset..u64::MAX, size, None, false).await
    }

    /// The bytes `part` of a blob of `size` bytes (`part.end` `u64::MAX`:
    /// up to its end) whose earlier bytes came with `etag`: one ranged GET,
    /// checked as a resume after a cut is, and resumed the same way. `extra`:
    /// a segment worker's [`extra`](BlobRange::extra) connection.
    pub(super) async fn open_part(
        target: Target<'a, U>,
        retry: FillRetry,
        part: std::ops::Range<u64>,
        size: Option<u64>,
        etag: Option<String>,
        extra: bool,
    ) -> Result<Self> {
        let offset = part.start;
        let opening = part.end != u64::MAX;
        let mut body = ResumingBody {
            target,
            retry,
            size,
            end: opening.then_some(part.end),
            opening,
            extra,
            etag,
            endpoint: None,
            avoid: Vec::new(),
            stream: None,
            pos: offset,
            skip: 0,
            answer_start: offset,
            stalled: 0,
            cuts: 0,
        };
        body.resume().await?;
        Ok(body)
    }

    /// The size the first answer announced.
    pub(super) fn size(&self) -> Option<u64> {
        self.size
    }

    /// Where the body ends when it is a part of the blob, not all of it.
    pub(super) fn part_end(&self) -> Option<u64> {
        self.end
    }

    /// The entity tag of the bytes so far.
    pub(super) fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The byte after the last one this body yields, when known.
    fn limit(&self) -> Option<u64> {
        self.end.or(self.size)
    }

    /// The next bytes of the blob; `None` at its end.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            let stream = self.stream.as_mut()?;
            let cut = match stream.next().await {
                Some(Ok(mut chunk)) => {
                    let dropped = self.skip.min(chunk.len() as u64);
                    self.skip -= dropped;
                    let _ = chunk.split_to(usize::try_from(dropped).unwrap_or(chunk.len()));
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Some(end) = self.end {
                        // An upstream may send more than the part asked for
                        // (the whole blob after a restart): the rest is not ours.
                        let room = end.saturating_sub(self.pos);
                        if chunk.len() as u64 >= room {
                            chunk.truncate(usize::try_from(room).unwrap_or(chunk.len()));
                            self.stream = None;
                            if chunk.is_empty() {
                                return None;
                            }
                        }
                    }
                    self.pos += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) if resumable(&e) => e,
                Some(Err(e)) => {
                    self.stream = None;
                    return Some(Err(e));
                }
                None => match self.limit() {
                    Some(size) if self.pos < size => Error::SizeMismatch {
                        digest: self.target.digest.clone(),
                        expected: size,
                        actual: self.pos,
                    },
                    _ => {
                        self.stream = None;
                        return None;
                    }
                },
            };
            self.stream = None;
            if self.limit().is_some_and(|limit| self.pos >= limit) {
                // Cut after the last byte: nothing is missing (the digest
                // check decides), and a range from the end is unsatisfiable.
                return None;
            }
            if let Err(e) = self.reconnect(cut).await {
                return Some(Err(e));
            }
        }
    }

    /// After a cut (`error`): waits, asks again from `pos`, and retries
    /// within the bounds of the [module docs](self); the last error when out of them.
    async fn reconnect(&mut self, mut error: Error) -> Result<()> {
        loop {
            self.cuts += 1;
            if self.pos > self.answer_start {
                self.stalled = 0;
            } else {
                self.stalled += 1;
            }
            let attempts = u64::from(self.retry.attempts.max(1));
            let budget = attempts * (1 + self.avoid.len() as u64) + self.pos / PROGRESS_PER_CUT;
            if self.cuts > budget {
                warn!(digest = %self.target.digest, cuts = self.cuts, offset = self.pos,
                    "blob fill: too many cut connections for the bytes they brought; giving up");
                return Err(error);
            }
            if self.stalled >= self.retry.attempts.max(1) {
                match self.endpoint.take() {
                    Some(endpoint) if !self.avoid.contains(&endpoint) => {
                        warn!(digest = %self.target.digest, %endpoint, attempts = self.stalled,
                            "blob fill: endpoint brought no new bytes; trying the next one of the chain");
                        self.avoid.push(endpoint);
                        self.stalled = 0;
                    }
                    _ => return Err(error),
                }
            }
            let delay = self.retry.delay(self.stalled, &error);
            info!(digest = %self.target.digest, offset = self.pos, delay_ms = delay.as_millis() as u64,
                error = %crate::ErrorChain(&error), "blob fill: upstream connection cut; resuming");
            tokio::time::sleep(delay).await;
            self.answer_start = self.pos;
            match self.resume().await {
                Ok(()) => return Ok(()),
                Err(e) if resumable(&e) => error = e,
                Err(e) => return Err(e),
            }
        }
    }

    /// One ranged GET from `pos`, checked against the bytes so far.
    async fn resume(&mut self) -> Result<()> {
        let offset = self.pos;
        let answer = self
            .get(
                BlobRange::from_offset(offset)
                    .with_end(self.end)
                    .with_if_range(self.etag.clone().filter(|t| !t.starts_with("W/"))),
            )
            .await?;
        let changed = self.changed(&answer);
        let opening = std::mem::take(&mut self.opening);
        if answer.start == offset && !changed {
            if !opening {
                debug!(digest = %self.target.digest, offset, "blob fill resumed with a range");
                self.report(FillPhase::Resumed { offset });
            }
            self.adopt(answer, 0);
            return Ok(());
        }
        let whole = match answer.start {
            0 => answer,
            start if start == offset => {
                // A part of another entity: only the whole blob can follow the bytes so far.
                drop(answer);
                let whole = self.get(BlobRange::from_offset(0)).await?;
                if whole.start != 0 {
                    return Err(self.invalid(format!(
                        "answered a blob request without a range from byte {}",
                        whole.start
                    )));
                }
                whole
            }
            start => {
                return Err(self.invalid(format!(
                    "answered a request for bytes {offset}- with bytes from {start}"
                )))
            }
        };
        let reason = if changed || self.changed(&whole) {
            RestartReason::EntityChanged
        } else {
            RestartReason::RangeIgnored
        };
        warn!(digest = %self.target.digest, offset, reason = reason.as_str(),
            "blob fill: upstream sent the whole blob again; dropping the bytes already here");
        self.report(FillPhase::Restarted { offset, reason });
        self.adopt(whole, offset);
        Ok(())
    }

    async fn get(&mut self, range: BlobRange) -> Result<FetchedRange> {
        let t = &self.target;
        let range = range
            .with_prefer(self.endpoint.clone())
            .with_avoid(self.avoid.clone())
            .with_extra(self.extra);
        t.upstream
            .blob_get_range(t.registry, t.repository, t.digest, &range)
            .await
    }

    /// Whether `answer` is another entity than the bytes so far came from.
    fn changed(&self, answer: &FetchedRange) -> bool {
        fn differs<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            matches!((a, b), (Some(a), Some(b)) if a != b)
        }
        differs(&self.size, &answer.total) || differs(&self.etag, &answer.etag)
    }

    /// Reads on from `answer`, dropping its first `skip` bytes.
    fn adopt(&mut self, answer: FetchedRange, skip: u64) {
        if answer.endpoint.is_some() {
            self.endpoint = answer.endpoint;
        }
        if answer.etag.is_some() {
            self.etag = answer.etag;
        }
        self.skip = skip;
        self.stream = Some(answer.stream);
    }

    fn invalid(&self, message: String) -> Error {
        let endpoint = self.endpoint.clone().unwrap_or_default();
        UpstreamError::new(UpstreamErrorKind::Invalid, endpoint, message).into()
    }

    fn report(&self, phase: FillPhase) {
        let t = &self.target;
        t.observer
            .fill(&FillEvent::new(t.digest.clone(), t.registry.clone(), phase));
    }
}

/// Whether a fill resumes after `error`: a cut or failed connection, a
/// stall, or an answer another attempt may get right; never a refusal
/// (`401`, `403`), a blob upstream no longer has, or a local failure.
fn resumable(error: &Error) -> bool {
    match error {
        Error::Upstream(e) => matches!(
            e.kind(),
            UpstreamErrorKind::Unavailable
                | UpstreamErrorKind::Timeout
                | UpstreamErrorKind::TooManyRequests
                | UpstreamErrorKind::Invalid
                | UpstreamErrorKind::Skipped
                | UpstreamErrorKind::Offline
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_without_bytes_and_honours_retry_after() {
        let retry = FillRetry::default().with_backoff(Duration::from_millis(100));
        let cut: Error = UpstreamError::new(UpstreamErrorKind::Unavailable, "e", "reset").into();
        let waits: Vec<u64> = (0..4)
            .map(|n| retry.delay(n, &cut).as_millis() as u64)
            .collect();
        assert_eq!(waits, [0, 100, 200, 400]);
        assert_eq!(retry.delay(40, &cut), MAX_DELAY);
        let busy: Error = UpstreamError::new(UpstreamErrorKind::TooManyRequests, "e", "429")
            .with_retry_after(Some(Duration::from_secs(3)))
            .into();
        assert_eq!(retry.delay(1, &busy), Duration::from_secs(3));
        let greedy: Error = UpstreamError::new(UpstreamErrorKind::Unavailable, "e", "503")
            .with_retry_after(Some(Duration::from_secs(3600)))
            .into();
        assert_eq!(retry.delay(0, &greedy), MAX_DELAY);
    }
}
