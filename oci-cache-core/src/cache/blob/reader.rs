//! One client's view of a fill, and the unshared upstream stream a client
//! falls back to.
//!
//! A stream that reaches the blob's end (the whole blob, or a range up to
//! its end) never yields its last byte before the whole blob is verified: the
//! http layer sends a response's last byte only when the stream gives it, so
//! a client can never see a complete blob whose bytes did not match the
//! digest; on a mismatch the stream ends with the error instead and the
//! connection is cut short (HTTP/1.1) or the stream reset (HTTP/2).
//!
//! A range that ends before the blob does is answered as soon as the fill has
//! passed its end, without waiting for the verdict: its bytes cannot be
//! checked on their own, so holding them back would only make lazy pullers
//! wait for the whole blob, and no ranged answer of a registry is checked
//! either. When the fill later fails verification, nothing is stored.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::watch;

use super::super::aborted;
use super::buffer::{io_error, Fill, Located, Phase, Source};
use crate::digest::{Digest, DigestVerifier};
use crate::file_io::ChunkReader;
use crate::storage::ByteStream;
use crate::{Error, Result};

/// What a client can fetch through its own registry and repository.
pub(super) trait Origin: Send + Sync {
    /// The client's own registry and repository.
    fn source(&self) -> &Source;
    /// A fill through the client's own source: the one under way for it, or a new one.
    fn own_fill(&self) -> Arc<Fill>;
    /// The whole blob straight from the client's own source, unshared and
    /// unstored, verified ([`verified`]).
    fn direct(&self) -> BoxFuture<'static, Result<ByteStream>>;
}

/// Whether a client of `fill` retries `error` through its own source: only
/// when the fill came from another source and failed for a reason of that
/// source, not of the content (which would fail everywhere).
pub(super) fn retries_own(fill: &Fill, origin: &dyn Origin, error: &Error) -> bool {
    fill.source != *origin.source() && !error.is_content_failure()
}

/// One client's view of a fill: `range` of the blob, as it arrives.
pub(super) struct Reader {
    fill: Arc<Fill>,
    rx: watch::Receiver<Phase>,
    pos: u64,
    end: u64,
    /// The range reaches the blob's end: its last byte waits for the verdict.
    hold_last: bool,
    ended: bool,
    /// Opened the first time this reader falls behind the window, on the
    /// file behind it (storage's staging file or the fill's spool).
    disk: Option<ChunkReader>,
    origin: Arc<dyn Origin>,
    /// Switched to its own source once already (at most once per request).
    retried: bool,
    /// Its own upstream stream, once the bytes it needs were lost (no spool).
    direct: Option<ByteStream>,
}

impl Reader {
    pub(super) fn new(
        fill: Arc<Fill>,
        range: std::ops::Range<u64>,
        size: u64,
        origin: Arc<dyn Origin>,
        retried: bool,
    ) -> Self {
        let rx = fill.progress.subscribe();
        Reader {
            fill,
            rx,
            pos: range.start,
            end: range.end,
            hold_last: range.end >= size,
            ended: false,
            disk: None,
            origin,
            retried,
            direct: None,
        }
    }

    pub(super) fn into_stream(self) -> ByteStream {
        futures::stream::unfold(self, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.ended {
            return None;
        }
        let item = self.step().await;
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }

    fn switch_to(&mut self, fill: Arc<Fill>) {
        self.rx = fill.progress.subscribe();
        self.fill = fill;
        self.disk = None;
        self.retried = true;
    }

    async fn step(&mut self) -> Option<Result<Bytes>> {
        loop {
            if let Some(direct) = &mut self.direct {
                return direct.next().await;
            }
            // Marks this state as seen before looking at the buffer, so any bytes
            // pushed after the look wake the `changed()` below.
            let phase = self.rx.borrow_and_update().clone();
            if !self.hold_last && self.pos >= self.end {
                return None;
            }
            if let Phase::Done(Err(e)) = &phase {
                if !self.retried && retries_own(&self.fill, self.origin.as_ref(), e) {
                    tracing::debug!(error = %e, "shared blob fill failed upstream; continuing through the client's own repository");
                    let own = self.origin.own_fill();
                    self.switch_to(own);
                    continue;
                }
                return Some(Err(e.duplicate()));
            }
            let verified = matches!(phase, Phase::Done(Ok(_)));
            // The last byte waits for the verdict (see the module docs).
            let limit = if verified || !self.hold_last {
                self.end
            } else {
                self.end.saturating_sub(1)
            };
            if self.pos >= limit {
                if verified {
                    return None;
                }
            } else {
                let located = self.fill.buffer().locate(self.pos, limit);
                match located {
                    Located::Memory(bytes) => {
                        self.pos += bytes.len() as u64;
                        return Some(Ok(bytes));
                    }
                    Located::Disk(file, len) => {
                        let disk = self.disk.get_or_insert_with(|| ChunkReader::new(file));
                        let len = usize::try_from(len).unwrap_or_default();
                        let read = match disk.read_at(self.pos, len).await {
                            // The file holds every byte located there by construction.
                            Ok(bytes) if bytes.is_empty() => Err(aborted("blob spool read")),
                            Ok(bytes) => Ok(bytes),
                            Err(e) => Err(io_error(e)),
                        };
                        if let Ok(bytes) = &read {
                            self.pos += bytes.len() as u64;
                        }
                        return Some(read);
                    }
                    Located::Lost => {
                        tracing::debug!(
                            pos = self.pos,
                            "bytes left the fill with no file to hold them; fetching this client's own copy"
                        );
                        match self.origin.direct().await {
                            Ok(stream) => self.direct = Some(slice(stream, self.pos, self.end)),
                            Err(e) => return Some(Err(e)),
                        }
                        continue;
                    }
                    Located::NotYet => {
                        // A verified fill holds every byte up to its size, and the
                        // range was clamped to it; this only guards against a bug.
                        if verified {
                            return Some(Err(aborted("blob fill")));
                        }
                    }
                }
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(aborted("blob fill")));
            }
        }
    }
}

/// `stream` (the whole blob) verified against `digest`: it holds back its
/// last chunk until every byte matched, then yields it and ends; on a mismatch,
/// a wrong size, or more than `max` bytes, it ends with that error instead.
pub(super) fn verified(
    stream: ByteStream,
    digest: Digest,
    size: Option<u64>,
    max: u64,
) -> ByteStream {
    struct State {
        stream: ByteStream,
        verifier: Option<DigestVerifier>,
        held: Option<Bytes>,
        received: u64,
        max: u64,
    }
    let state = State {
        stream,
        verifier: Some(DigestVerifier::new(digest, size)),
        held: None,
        received: 0,
        max,
    };
    futures::stream::unfold(state, |mut s| async move {
        s.verifier.as_ref()?;
        loop {
            match s.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    s.received += chunk.len() as u64;
                    let checked = match s.verifier.as_mut() {
                        Some(verifier) => {
                            check_cap(s.received, s.max).and_then(|()| verifier.update(&chunk))
                        }
                        None => return None,
                    };
                    if let Err(e) = checked {
                        s.verifier = None;
                        return Some((Err(e), s));
                    }
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Some(Err(e)) => {
                    s.verifier = None;
                    return Some((Err(e), s));
                }
                None => {
                    let verdict = s.verifier.take()?.finish();
                    return match (verdict, s.held.take()) {
                        (Ok(_), Some(last)) => Some((Ok(last), s)),
                        (Ok(_), None) => None,
                        (Err(e), _) => Some((Err(e), s)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// Fails once more than `max` bytes arrived: a body without a length must not
/// fill the disk.
pub(super) fn check_cap(received: u64, max: u64) -> Result<()> {
    if received > max {
        return Err(Error::TooLarge {
            what: "blob from upstream (max_blob_size)".into(),
            limit: max,
            actual: received,
        });
    }
    Ok(())
}

/// The bytes `[from, end)` of a verified whole-blob `stream`, whose last byte
/// comes only once the stream ended cleanly (was verified).
fn slice(stream: ByteStream, from: u64, end: u64) -> ByteStream {
    struct State {
        stream: ByteStream,
        offset: u64,
        held: Option<Bytes>,
        done: bool,
    }
    let state = State {
        stream,
        offset: 0,
        held: None,
        done: false,
    };
    futures::stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.stream.next().await {
                Some(Ok(chunk)) => {
                    let chunk_start = s.offset;
                    s.offset += chunk.len() as u64;
                    let lo = from.max(chunk_start);
                    let hi = end.min(s.offset);
                    if lo >= hi {
                        continue;
                    }
                    let to_usize = |v: u64| usize::try_from(v - chunk_start).unwrap_or_default();
                    let mut piece = chunk.slice(to_usize(lo)..to_usize(hi));
                    if hi == end {
                        // The range's last byte waits for the end of the whole stream.
                        s.held = Some(piece.split_off(piece.len() - 1));
                    }
                    if !piece.is_empty() {
                        return Some((Ok(piece), s));
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    return match s.held.take() {
                        Some(last) => Some((Ok(last), s)),
                        // Shorter than the range: never a clean end.
                        None if end > from => Some((Err(aborted("blob stream")), s)),
                        None => None,
                    };
                }
            }
        }
    })
    .boxed()
}
