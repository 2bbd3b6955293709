//! Blob misses: one detached fill per digest, shared by every client that asks.
//!
//! # Design
//!
//! A fill is a tokio task, not tied to any request, that reads the upstream
//! body once and tees each chunk into
//!
//! 1. the storage write ([`BlobSource::Preverified`] fed through a
//!    bounded channel: the fill hashes every byte once, for its clients and
//!    for storage, and ends the channel with its verdict, so the backend
//!    commits atomically without hashing the blob a second time), and
//! 2. the fill's *buffer*, which every joined client reads at its own pace.
//!
//! The buffer is a window of the most recent chunks in memory (at most
//! [`CacheOptions::fill_window`](super::CacheOptions::fill_window) bytes, plus
//! one batch) backed by an anonymous spool file: chunks leave the window only
//! after they were written to the spool. So every byte that has arrived is
//! always readable, either from memory or from the spool, and memory stays
//! flat whatever the blob size. Blobs smaller than the window never touch the
//! spool. A client that joins late, or falls behind, reads from the spool until
//! it reaches the window and then follows live; a slow client never slows the
//! fill or the other clients, and the fill never waits for clients.
//!
//! The alternatives were weaker: keeping every chunk in memory grows with the
//! blob (1 GiB layers against a 48 MiB budget); a fixed ring with a broadcast
//! leaves late joiners nowhere to get the bytes that already passed; waiting for
//! the commit and then reading storage makes late joiners wait for the whole
//! blob. The price of the spool is a second disk write for blobs larger than
//! the window, which the page cache mostly absorbs.
//!
//! Clients are told about progress through a `watch` channel (no polling). A
//! client's stream ends cleanly only after the fill has verified the whole blob
//! against its digest; when verification or the upstream fails, every joined
//! stream ends with that error (the http layer then cuts the connection) and
//! nothing is stored. The fill leaves the single-flight map only after the
//! storage write has finished, so a request arriving after that finds the blob
//! in storage, or, after a failure, starts a clean new fill.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use super::{aborted, BlobResponse, CacheOutcome, Engine};
use crate::digest::{Digest, DigestVerifier};
use crate::error::ErrorChain;
use crate::file_io::ChunkReader;
use crate::observe::{FillEvent, FillPhase};
use crate::reference::{Registry, Repository};
use crate::storage::{BlobSource, ByteStream, PreverifiedStream, Storage};
use crate::upstream::Upstream;
use crate::{Error, Result};

/// Chunks queued between the fill and the storage write.
const STORE_QUEUE: usize = 8;
/// Largest single read from the spool (the filesystem backend's chunk size).
const SPOOL_READ: u64 = 128 * 1024;

/// The fills under way, by digest. Blobs are content-addressed and shared by all
/// upstreams, so one fill serves every repository that asks for the digest.
pub(super) struct BlobFills {
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

impl std::fmt::Debug for BlobFills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobFills")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl BlobFills {
    pub(super) fn new() -> Self {
        BlobFills {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Number of fills under way.
    pub(super) fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }

    /// The size of the blob if a fill for it is under way and knows it.
    pub(super) fn known_size(&self, digest: &Digest) -> Option<u64> {
        let fill = lock(&self.map).get(digest).cloned()?;
        let phase = fill.progress.borrow().clone();
        match phase {
            Phase::Streaming { size } => size,
            Phase::Done(Ok(size)) => Some(size),
            Phase::Connecting | Phase::Done(Err(_)) => None,
        }
    }

    /// The fill for `digest`, and whether this call created it.
    fn join_or_create(&self, digest: &Digest) -> (Arc<Fill>, bool) {
        let mut map = lock(&self.map);
        if let Some(fill) = map.get(digest) {
            return (Arc::clone(fill), false);
        }
        let fill = Arc::new(Fill::new());
        map.insert(digest.clone(), Arc::clone(&fill));
        (fill, true)
    }
}

/// Serves a blob that is not in storage from the fill for it, starting one if
/// none is under way.
pub(super) async fn fetch<S, U>(
    engine: &Arc<Engine<S, U>>,
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    range: Option<Range<u64>>,
) -> Result<BlobResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    let (fill, created) = engine.blob_fills.join_or_create(digest);
    if created {
        // Nothing between the insert above and this spawn can be cancelled (no
        // await), so a fill in the map always has a task behind it.
        let task = FillTask {
            engine: Arc::clone(engine),
            fill: Arc::clone(&fill),
            registry: registry.clone(),
            repository: repository.clone(),
            digest: digest.clone(),
        };
        let span = tracing::info_span!("blob_fill", %digest, upstream = %registry);
        tokio::spawn(task.run().instrument(span));
    } else {
        debug!(%digest, "joining the blob fill under way");
    }
    let size = fill.size().await?;
    let range = crate::storage::resolve_range(size, range)?;
    Ok(BlobResponse {
        size,
        range: range.clone(),
        stream: Reader::new(fill, range).into_stream(),
        outcome: if created {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Coalesced
        },
    })
}

#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for upstream to answer.
    Connecting,
    /// Bytes are arriving; `size` as upstream announced it.
    Streaming { size: Option<u64> },
    /// Verified with this size, or failed.
    Done(Result<u64, Arc<Error>>),
}

/// One blob being fetched.
struct Fill {
    /// Phase changes and every arrival of bytes notify the readers.
    progress: watch::Sender<Phase>,
    buffer: Mutex<Buffer>,
}

/// Bytes `[0, start)` are in the spool, `[start, start + len)` in `chunks`.
struct Buffer {
    chunks: VecDeque<Bytes>,
    start: u64,
    len: u64,
    spool: Option<Arc<File>>,
}

/// Where a reader finds the bytes at its position.
enum Located {
    Memory(Bytes),
    Spool(Arc<File>, u64),
    NotYet,
}

impl Buffer {
    fn written(&self) -> u64 {
        self.start + self.len
    }

    fn locate(&self, pos: u64, end: u64) -> Located {
        if pos >= self.written() {
            return Located::NotYet;
        }
        if pos < self.start {
            return match &self.spool {
                Some(file) => Located::Spool(
                    Arc::clone(file),
                    (end.min(self.start) - pos).min(SPOOL_READ),
                ),
                // Unreachable by construction: `start` only moves after a spool write.
                None => Located::NotYet,
            };
        }
        let mut offset = self.start;
        for chunk in &self.chunks {
            let chunk_end = offset + chunk.len() as u64;
            if pos < chunk_end {
                let from = usize::try_from(pos - offset).unwrap_or_default();
                let to = usize::try_from(end.min(chunk_end) - offset).unwrap_or_default();
                return Located::Memory(chunk.slice(from..to));
            }
            offset = chunk_end;
        }
        Located::NotYet
    }
}

impl Fill {
    fn new() -> Self {
        Fill {
            progress: watch::Sender::new(Phase::Connecting),
            buffer: Mutex::new(Buffer {
                chunks: VecDeque::new(),
                start: 0,
                len: 0,
                spool: None,
            }),
        }
    }

    /// Waits until the blob's size is known: announced by upstream, or, when
    /// upstream sent no length, once the fill has finished.
    async fn size(&self) -> Result<u64> {
        let mut rx = self.progress.subscribe();
        loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                Phase::Streaming { size: Some(size) } | Phase::Done(Ok(size)) => return Ok(size),
                Phase::Done(Err(e)) => return Err(e.duplicate()),
                Phase::Connecting | Phase::Streaming { size: None } => {}
            }
            if rx.changed().await.is_err() {
                return Err(aborted("blob fill"));
            }
        }
    }

    fn finish(&self, result: Result<u64, Arc<Error>>) {
        self.progress.send_replace(Phase::Done(result));
    }

    fn is_done(&self) -> bool {
        matches!(*self.progress.borrow(), Phase::Done(_))
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.buffer)
    }

    fn push(&self, chunk: Bytes) {
        {
            let mut buffer = self.buffer();
            buffer.len += chunk.len() as u64;
            buffer.chunks.push_back(chunk);
        }
        self.progress.send_modify(|_| ());
    }

    /// Moves the oldest chunks to the spool until at most `keep` bytes remain in
    /// memory. Chunks leave memory only once written, so readers never miss bytes.
    async fn spill(&self, spool: &Arc<File>, keep: u64) -> Result<()> {
        let (batch, at) = {
            let buffer = self.buffer();
            let mut batch = Vec::new();
            let mut remaining = buffer.len;
            for chunk in &buffer.chunks {
                if remaining <= keep {
                    break;
                }
                remaining -= chunk.len() as u64;
                batch.push(chunk.clone());
            }
            (batch, buffer.start)
        };
        let file = Arc::clone(spool);
        let count = batch.len();
        let moved = blocking(move || {
            let mut at = at;
            for chunk in &batch {
                write_at(&file, chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(at)
        })
        .await?;
        let mut buffer = self.buffer();
        let count = count.min(buffer.chunks.len());
        buffer.chunks.drain(..count);
        buffer.len -= moved - buffer.start;
        buffer.start = moved;
        buffer.spool.get_or_insert_with(|| Arc::clone(spool));
        Ok(())
    }
}

/// The detached task that fetches one blob.
struct FillTask<S: ?Sized, U: ?Sized> {
    engine: Arc<Engine<S, U>>,
    fill: Arc<Fill>,
    registry: Registry,
    repository: Repository,
    digest: Digest,
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> FillTask<S, U> {
    async fn run(self) {
        let _guard = FillGuard {
            map: Arc::clone(&self.engine.blob_fills.map),
            fill: Arc::clone(&self.fill),
            digest: self.digest.clone(),
        };
        let digest = &self.digest;
        self.report(FillPhase::Started);
        let fetched = match self
            .engine
            .upstream
            .blob_get(&self.registry, &self.repository, digest)
            .await
        {
            Ok(fetched) => fetched,
            Err(e) => {
                let error = ErrorChain(&e).to_string();
                warn!(%digest, registry = %self.registry, %error, "blob fetch failed");
                self.report(FillPhase::Failed { error });
                self.fill.finish(Err(Arc::new(e)));
                return;
            }
        };
        let size = fetched.size;
        info!(%digest, registry = %self.registry, repository = %self.repository, ?size, "filling blob from upstream");
        self.fill.progress.send_replace(Phase::Streaming { size });

        let (to_store, store_rx) = mpsc::channel(STORE_QUEUE);
        let pump = async {
            let result = self.pump(fetched.stream, size, to_store).await;
            // Readers are released as soon as the bytes are verified; the commit
            // below only decides what later requests find in storage.
            self.fill.finish(result.map_err(Arc::new));
        };
        let store = self.engine.storage.blob_write_from(
            digest,
            size,
            BlobSource::Preverified(preverified_stream(store_rx)),
        );
        let ((), stored) = tokio::join!(pump, store);
        let verified = matches!(*self.fill.progress.borrow(), Phase::Done(Ok(_)));
        let failed = match (verified, stored) {
            (true, Ok(bytes)) => {
                info!(%digest, bytes, "blob verified and stored");
                self.report(FillPhase::Stored { bytes });
                return;
            }
            (true, Err(e)) => {
                let error = ErrorChain(&e).to_string();
                warn!(%digest, %error, "blob verified but not stored; the next request fetches it again");
                error
            }
            (false, _) => match &*self.fill.progress.borrow() {
                Phase::Done(Err(e)) => {
                    let error = ErrorChain(e.as_ref()).to_string();
                    warn!(%digest, %error, "blob fill failed; nothing stored");
                    error
                }
                _ => "blob fill ended without a verdict".to_owned(),
            },
        };
        self.report(FillPhase::Failed { error: failed });
    }

    fn report(&self, phase: FillPhase) {
        self.engine.observer.fill(&FillEvent {
            digest: self.digest.clone(),
            upstream: self.registry.clone(),
            phase,
        });
    }

    /// Reads upstream to the end, feeding the buffer first (clients) and then
    /// storage; the total size when the bytes match the digest.
    async fn pump(
        &self,
        mut upstream: ByteStream,
        size: Option<u64>,
        to_store: mpsc::Sender<Result<Feed>>,
    ) -> Result<u64> {
        let mut verifier = DigestVerifier::new(self.digest.clone(), size);
        let keep = self.engine.options.fill_window as u64;
        let mut spool: Option<Arc<File>> = None;
        let mut storing = true;
        let result = async {
            while let Some(chunk) = upstream.next().await {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                verifier.update(&chunk)?;
                self.fill.push(chunk.clone());
                if self.fill.buffer().len > keep {
                    let file = match &spool {
                        Some(file) => Arc::clone(file),
                        None => {
                            let file = Arc::new(self.create_spool().await?);
                            spool = Some(Arc::clone(&file));
                            file
                        }
                    };
                    // Spill down to half the window so spool writes come in batches.
                    self.fill.spill(&file, keep / 2).await?;
                }
                if storing && to_store.send(Ok(Feed::Chunk(chunk))).await.is_err() {
                    // The backend gave up (its error is reported when the write
                    // returns); the clients are still served.
                    storing = false;
                }
            }
            verifier.finish()
        }
        .await;
        // Storage hashes nothing itself (a preverified write): this verdict is
        // what lets it commit, or makes it discard the staged bytes.
        let verdict = match &result {
            Ok(_) => Ok(Feed::Verified),
            Err(e) => Err(e.duplicate()),
        };
        if storing {
            let _ = to_store.send(verdict).await;
        }
        result
    }

    async fn create_spool(&self) -> Result<File> {
        let dir = self
            .engine
            .options
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        blocking(move || tempfile::tempfile_in(&dir).map_err(|e| spool_error(&dir, e))).await
    }
}

/// Ends the fill if its task stops without finishing (a panic, runtime
/// shutdown), and takes it out of the single-flight map in every case.
struct FillGuard {
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    fill: Arc<Fill>,
    digest: Digest,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.fill.is_done() {
            self.fill.finish(Err(Arc::new(aborted("blob fill"))));
        }
        let mut map = lock(&self.map);
        if map
            .get(&self.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.digest);
        }
    }
}

/// One client's view of a fill: `range` of the blob, as it arrives.
struct Reader {
    fill: Arc<Fill>,
    rx: watch::Receiver<Phase>,
    pos: u64,
    end: u64,
    ended: bool,
    /// Opened the first time this reader falls behind the window.
    spool: Option<ChunkReader>,
}

impl Reader {
    fn new(fill: Arc<Fill>, range: Range<u64>) -> Self {
        let rx = fill.progress.subscribe();
        Reader {
            fill,
            rx,
            pos: range.start,
            end: range.end,
            ended: false,
            spool: None,
        }
    }

    fn into_stream(self) -> ByteStream {
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

    async fn step(&mut self) -> Option<Result<Bytes>> {
        loop {
            // Marks this state as seen before looking at the buffer, so any bytes
            // pushed after the look wake the `changed()` below.
            let phase = self.rx.borrow_and_update().clone();
            if let Phase::Done(Err(e)) = &phase {
                return Some(Err(e.duplicate()));
            }
            if self.pos >= self.end {
                // All asked-for bytes are out, but the stream only ends cleanly
                // once the whole blob has been verified.
                if let Phase::Done(Ok(_)) = phase {
                    return None;
                }
            } else {
                let located = self.fill.buffer().locate(self.pos, self.end);
                match located {
                    Located::Memory(bytes) => {
                        self.pos += bytes.len() as u64;
                        return Some(Ok(bytes));
                    }
                    Located::Spool(file, len) => {
                        let spool = self.spool.get_or_insert_with(|| ChunkReader::new(file));
                        let len = usize::try_from(len).unwrap_or_default();
                        let read = match spool.read_at(self.pos, len).await {
                            // The spool holds every byte before the window by construction.
                            Ok(bytes) if bytes.is_empty() => Err(aborted("blob spool read")),
                            Ok(bytes) => Ok(bytes),
                            Err(e) => Err(io_error(e)),
                        };
                        if let Ok(bytes) = &read {
                            self.pos += bytes.len() as u64;
                        }
                        return Some(read);
                    }
                    Located::NotYet => {
                        // A verified fill holds every byte up to its size, and the
                        // range was clamped to it; this only guards against a bug.
                        if let Phase::Done(Ok(_)) = phase {
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

/// What the fill sends the storage write: bytes, then the verdict.
enum Feed {
    Chunk(Bytes),
    /// Every byte matched the digest: the write may commit.
    Verified,
}

/// Turns the storage channel into the stream
/// [`BlobSource::Preverified`] consumes. It ends cleanly only on
/// [`Feed::Verified`]; a channel closed without a verdict (the fill task went
/// away) is an error, so the backend never commits unverified bytes.
fn preverified_stream(rx: mpsc::Receiver<Result<Feed>>) -> PreverifiedStream {
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Ok(Feed::Chunk(chunk))) => Some((Ok(chunk), Some(rx))),
            Some(Ok(Feed::Verified)) => None,
            Some(Err(e)) => Some((Err(e), None)),
            None => Some((Err(aborted("blob fill")), None)),
        }
    })
    .boxed();
    PreverifiedStream::new(stream)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(aborted(&format!("spool i/o ({e})"))))
}

fn spool_error(dir: &std::path::Path, e: std::io::Error) -> Error {
    Error::storage(
        "spool",
        format!(
            "cannot use the blob spool in {}; check that the directory exists and is writable",
            dir.display()
        ),
        e,
    )
}

fn io_error(e: std::io::Error) -> Error {
    Error::storage("spool", "blob spool i/o failed", e)
}

fn write_at(file: &File, bytes: &[u8], at: u64) -> Result<()> {
    write_all_at(file, bytes, at).map_err(io_error)
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        let n = file.seek_write(bytes, at)?;
        bytes = &bytes[n..];
        at += n as u64;
    }
    Ok(())
}
