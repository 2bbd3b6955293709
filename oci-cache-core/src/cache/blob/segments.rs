//! A large cold blob fetched over several ranged connections at once.
//!
//! Upstreams often cap each connection (a CDN in front of a registry), so
//! one connection per blob leaves most of the link unused. A fill whose
//! [`FillSegments::connections`] is above 1 asks its first GET with a range,
//! `Range: bytes=0-(min_size-1)`: that probe is how it learns, in the same
//! round trip and without a `HEAD`, both the blob's size and that the
//! upstream serves ranges (a `206` whose `Content-Range` starts at 0 and
//! names the total). A blob smaller than the probe arrives whole in that one
//! answer, as before. An upstream that ignores the range (`200`) sends the
//! whole blob, read on one connection as before.
//!
//! When the `206` says there is more, the rest of the blob is cut into
//! parts that do not overlap (about `rest / (connections - 1)` bytes each,
//! between 1 and 64 MiB), and up to `connections - 1` workers fetch parts on
//! connections of their own, each a [`ResumingBody`] bounded to its part
//! (`Range: bytes=A-(B-1)` with the first answer's `ETag` as `If-Range`).
//! A worker writes its part to an anonymous temporary file in the spool
//! directory, never into memory beyond one batch, and takes the next part
//! nobody took until none is left.
//!
//! The fill itself reads strictly in order: the first answer, then each part
//! — from its worker's file as it grows, or, for a part no worker took yet,
//! straight from a connection it opens for it. So the digest is still
//! checked over every byte in order before anything becomes visible, and
//! clients read as from one connection. Every byte is asked for once
//! (origin bytes 1.00×): the first connection ends at the probe's end, and
//! parts never overlap.
//!
//! A part whose connection is cut is resumed inside its worker from the
//! first byte not yet received, as a fill resumes (see [`resume`](super::resume)).
//! A worker that gives up (out of retries, a refusal) leaves the bytes it
//! wrote; the fill reads those and asks for the rest of that part alone.
//!
//! Bounds: extra connections per upstream are `connections - 1` at a time,
//! shared by all of its fills. A fill that finds fewer free slots than it
//! wants starts what it can and waits (first come, first served) for the
//! rest: each slot another fill frees while parts are left starts one more
//! worker (layers of one image start together, and the small ones free
//! their slots soon). Parts nobody took by the time the fill reaches them
//! it reads itself. Every request still takes
//! a blob slot of the upstream's request budget, which keeps slots for
//! manifests and tokens.
//!
//! Adaptive: a worker whose connection the upstream refuses (`429`, `503`,
//! refused: a cap on connections per client) stops, and its slot is put
//! aside for a while, so the upstream is asked for one connection fewer.
//! Its GETs are marked [`extra`](crate::upstream::BlobRange::extra), so such
//! a refusal does not count against the endpoint. Not done: measuring
//! whether the first connection alone already fills the link before
//! opening more.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::buffer::{io_error, lock};
use super::resume::{FillRetry, ResumingBody, Target};
use crate::digest::Digest;
use crate::file_io::ChunkReader;
use crate::observe::SharedObserver;
use crate::reference::{Registry, Repository};
use crate::upstream::Upstream;
use crate::Result;
use workers::{recruit, work_in_slot};

mod workers;

const MIB: u64 = 1024 * 1024;
/// The smallest and largest part; small enough that a fast worker takes
/// several parts of a huge blob, large enough that a request's round trip
/// is a small share of its transfer.
const PART_SIZE: Range<u64> = MIB..64 * MIB;
/// Bytes a worker gathers before one write to its part's file.
const BATCH: usize = 256 * 1024;
/// The most the fill reads from a worker's file at once: no more than one
/// upstream read (hyper's 128 KiB buffer), since the fill's queue to storage
/// and its clients' window count chunks, and 256 KiB chunks there doubled
/// what a fill holds (16 concurrent cold pulls peaked ~10 MiB higher).
const SPOOLED_READ: usize = 128 * 1024;

/// How a cold blob is fetched over several connections
/// ([`CacheOptions::fill_segments`](super::super::CacheOptions::fill_segments),
/// `[cache.fill_segments]` in the config file; docs/performance.md says how).
///
/// ```
/// use oci_cache_core::cache::FillSegments;
///
/// let off = FillSegments::default().with_connections(1);
/// assert!(!off.enabled());
/// assert!(FillSegments::default().enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FillSegments {
    /// Connections per blob at most, the first included; 0 or 1 is one
    /// connection (off). Also the cap, minus one, on extra connections per
    /// upstream at a time. Default 4.
    pub connections: u32,
    /// Blobs up to this size come over one connection: the first GET asks
    /// for this many bytes, and only the rest is split (`"16MiB"` or a
    /// number, at least 1 MiB). Default 16 MiB.
    #[serde(deserialize_with = "crate::evict::deserialize_size_u64")]
    pub min_size: u64,
}

impl Default for FillSegments {
    fn default() -> Self {
        FillSegments {
            connections: 4,
            min_size: 16 * MIB,
        }
    }
}

impl FillSegments {
    /// Sets the connections per blob (0 or 1: off).
    pub fn with_connections(mut self, connections: u32) -> Self {
        self.connections = connections;
        self
    }

    /// Sets the size up to which a blob comes over one connection.
    pub fn with_min_size(mut self, bytes: u64) -> Self {
        self.min_size = bytes;
        self
    }

    /// Whether blobs may be fetched over more than one connection.
    pub fn enabled(&self) -> bool {
        self.connections > 1
    }

    /// The range the first GET asks for, when segmenting.
    pub(super) fn probe(&self) -> Option<u64> {
        self.enabled().then_some(self.min_size.max(PART_SIZE.start))
    }

    fn extra(&self) -> usize {
        usize::try_from(self.connections.saturating_sub(1)).unwrap_or(usize::MAX)
    }

    /// The parts `rest` is cut into.
    fn parts(&self, rest: Range<u64>) -> Vec<Range<u64>> {
        let workers = self.extra().max(1) as u64;
        let len = rest.end.saturating_sub(rest.start);
        let part = len.div_ceil(workers).clamp(PART_SIZE.start, PART_SIZE.end);
        let mut parts = Vec::new();
        let mut at = rest.start;
        while at < rest.end {
            let end = at.saturating_add(part).min(rest.end);
            parts.push(at..end);
            at = end;
        }
        parts
    }
}

/// Extra connections in use per upstream, shared by all fills.
#[derive(Debug, Default)]
pub(super) struct SegmentSlots(Mutex<HashMap<Registry, Arc<Semaphore>>>);

impl SegmentSlots {
    /// The slots for extra connections to `registry` (`per_upstream` of
    /// them): one permit per connection.
    fn of(&self, registry: &Registry, per_upstream: usize) -> Arc<Semaphore> {
        Arc::clone(
            lock(&self.0)
                .entry(registry.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(per_upstream))),
        )
    }
}

/// What a worker needs, owned: it runs as a task of its own.
pub(super) struct Job<U: ?Sized> {
    pub(super) upstream: Arc<U>,
    pub(super) registry: Registry,
    pub(super) repository: Repository,
    pub(super) digest: Digest,
    pub(super) observer: SharedObserver,
    pub(super) retry: FillRetry,
    pub(super) spool_dir: PathBuf,
    pub(super) options: FillSegments,
}

impl<U: ?Sized> Job<U> {
    fn target(&self) -> Target<'_, U> {
        Target {
            upstream: self.upstream.as_ref(),
            registry: &self.registry,
            repository: &self.repository,
            digest: &self.digest,
            observer: &self.observer,
        }
    }
}

/// How much of a part its worker wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// So many bytes so far, more to come.
    Growing(u64),
    /// The whole part.
    Done,
    /// The worker gave up after so many bytes.
    GaveUp(u64),
}

/// A part a worker took: its file and how far it got.
struct Spooled {
    file: Arc<File>,
    written: watch::Sender<Written>,
}

enum PartState {
    Open,
    /// Taken by a worker.
    Worker(Arc<Spooled>),
    /// Taken by the fill itself.
    Fill,
}

/// The parts after the first answer, and who has each.
struct Plan {
    parts: Vec<Range<u64>>,
    states: Mutex<Vec<PartState>>,
    size: u64,
    etag: Option<String>,
}

impl Plan {
    /// For a worker: the first open part, with a file made for it.
    fn take_for_worker(&self, file: &Arc<File>) -> Option<(Range<u64>, Arc<Spooled>)> {
        let mut states = lock(&self.states);
        let index = states.iter().position(|s| matches!(s, PartState::Open))?;
        let spooled = Arc::new(Spooled {
            file: Arc::clone(file),
            written: watch::Sender::new(Written::Growing(0)),
        });
        states[index] = PartState::Worker(Arc::clone(&spooled));
        Some((self.parts[index].clone(), spooled))
    }

    /// Whether a part is left that nobody took.
    fn has_open(&self) -> bool {
        lock(&self.states)
            .iter()
            .any(|s| matches!(s, PartState::Open))
    }

    /// For the fill: part `index`, from its worker if one took it.
    fn take_for_fill(&self, index: usize) -> Option<Arc<Spooled>> {
        let mut states = lock(&self.states);
        match states.get(index) {
            Some(PartState::Worker(spooled)) => Some(Arc::clone(spooled)),
            _ => {
                if let Some(state) = states.get_mut(index) {
                    *state = PartState::Fill;
                }
                None
            }
        }
    }
}

/// Where the fill reads now.
enum Current<'a, U: ?Sized> {
    /// A connection of its own (the first answer, or a part nobody took).
    Direct(ResumingBody<'a, U>),
    /// A worker's file for `part`, read up to `pos`.
    Spooled {
        spooled: Arc<Spooled>,
        reader: ChunkReader,
        part: Range<u64>,
        pos: u64,
    },
}

/// The fill's upstream body over one or several connections ([module docs](self)).
pub(super) struct SegmentedBody<'a, U: ?Sized> {
    target: Target<'a, U>,
    retry: FillRetry,
    size: Option<u64>,
    current: Current<'a, U>,
    /// The parts after the first answer, and the next one to read.
    plan: Option<(Arc<Plan>, usize)>,
    /// The first answer ended before the blob's end, whose size is unknown:
    /// the rest follows on one connection.
    tail: Option<u64>,
    workers: Vec<JoinHandle<()>>,
}

impl<U: ?Sized> Drop for SegmentedBody<'_, U> {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

impl<'a, U: Upstream + ?Sized> SegmentedBody<'a, U> {
    /// One connection, as a body that was opened elsewhere.
    pub(super) fn single(body: ResumingBody<'a, U>, target: Target<'a, U>) -> Self {
        SegmentedBody {
            target,
            retry: FillRetry::default(),
            size: body.size(),
            current: Current::Direct(body),
            plan: None,
            tail: None,
            workers: Vec::new(),
        }
    }

    /// Opens the blob from byte 0: the probe, then the workers when the
    /// answer calls for them.
    pub(super) async fn open(
        target: Target<'a, U>,
        job: Job<U>,
        slots: &SegmentSlots,
    ) -> Result<Self>
    where
        U: 'static,
    {
        let options = job.options;
        let first = ResumingBody::open(target, job.retry, options.probe()).await?;
        let size = first.size();
        let mut body = SegmentedBody {
            target,
            retry: job.retry,
            size,
            plan: None,
            tail: None,
            workers: Vec::new(),
            current: Current::Direct(first),
        };
        let Current::Direct(first) = &body.current else {
            return Ok(body);
        };
        let Some(head_end) = first.part_end() else {
            return Ok(body);
        };
        let Some(size) = size else {
            body.tail = Some(head_end);
            return Ok(body);
        };
        if head_end >= size {
            return Ok(body);
        }
        let plan = Arc::new(Plan {
            parts: options.parts(head_end..size),
            states: Mutex::new(Vec::new()),
            size,
            etag: first.etag().map(str::to_owned),
        });
        *lock(&plan.states) = plan.parts.iter().map(|_| PartState::Open).collect();
        let job = Arc::new(job);
        let slots = slots.of(&job.registry, options.extra());
        let wanted = options.extra().min(plan.parts.len());
        let mut started = 0;
        while started < wanted {
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            body.workers.push(tokio::spawn(work_in_slot(
                Arc::clone(&job),
                Arc::clone(&plan),
                slot,
            )));
            started += 1;
        }
        if started < wanted {
            debug!(digest = %job.digest, started, wanted,
                "segment slots of this upstream in use by other fills; more workers as they free");
            body.workers.push(tokio::spawn(recruit(
                Arc::clone(&job),
                Arc::clone(&plan),
                slots,
                wanted - started,
            )));
        }
        info!(digest = %job.digest, size, parts = plan.parts.len() + 1,
            connections = started + 1, "fetching the blob over several connections");
        body.plan = Some((plan, 0));
        Ok(body)
    }

    /// The blob's size, as the first answer announced it.
    pub(super) fn size(&self) -> Option<u64> {
        self.size
    }

    /// The next bytes of the blob, in order; `None` at its end.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            match &mut self.current {
                Current::Direct(body) => {
                    if let Some(item) = body.next().await {
                        return Some(item);
                    }
                }
                Current::Spooled {
                    spooled,
                    reader,
                    part,
                    pos,
                } => {
                    if *pos < part.end {
                        match read_spooled(spooled, reader, part, *pos).await {
                            Ok(Some(chunk)) => {
                                *pos += chunk.len() as u64;
                                return Some(Ok(chunk));
                            }
                            Ok(None) => {
                                // The worker gave up: the rest of its part, alone.
                                let rest = *pos..part.end;
                                if let Err(e) = self.open_direct(rest).await {
                                    return Some(Err(e));
                                }
                            }
                            Err(e) => return Some(Err(e)),
                        }
                        continue;
                    }
                }
            }
            match self.advance().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Moves on to the next part; false after the last.
    async fn advance(&mut self) -> Result<bool> {
        if let Some(from) = self.tail.take() {
            self.open_direct(from..u64::MAX).await?;
            return Ok(true);
        }
        let Some((plan, next)) = &mut self.plan else {
            return Ok(false);
        };
        let Some(part) = plan.parts.get(*next).cloned() else {
            return Ok(false);
        };
        let taken = plan.take_for_fill(*next);
        *next += 1;
        match taken {
            Some(spooled) => {
                let reader = ChunkReader::new(Arc::clone(&spooled.file));
                let pos = part.start;
                self.current = Current::Spooled {
                    spooled,
                    reader,
                    part,
                    pos,
                };
            }
            None => self.open_direct(part).await?,
        }
        Ok(true)
    }

    async fn open_direct(&mut self, part: Range<u64>) -> Result<()> {
        let (size, etag) = match &self.plan {
            Some((plan, _)) => (Some(plan.size), plan.etag.clone()),
            None => (self.size, None),
        };
        let body =
            ResumingBody::open_part(self.target, self.retry, part, size, etag, false).await?;
        self.current = Current::Direct(body);
        Ok(())
    }
}

/// The next bytes of `part` at `pos` from its worker's file, waiting for
/// them; `None` when the worker gave up before `pos`.
async fn read_spooled(
    spooled: &Spooled,
    reader: &mut ChunkReader,
    part: &Range<u64>,
    pos: u64,
) -> Result<Option<Bytes>> {
    let mut written = spooled.written.subscribe();
    let at = pos - part.start;
    let available = loop {
        let now = *written.borrow_and_update();
        match now {
            Written::Done => break part.end - pos,
            Written::Growing(n) | Written::GaveUp(n) if n > at => break n - at,
            Written::GaveUp(_) => return Ok(None),
            Written::Growing(_) => {
                if written.changed().await.is_err() {
                    // The worker went away without a word: what it wrote stands.
                    return Ok(None);
                }
            }
        }
    };
    let len = usize::try_from(available)
        .unwrap_or(SPOOLED_READ)
        .min(SPOOLED_READ);
    let chunk = reader.read_at(at, len).await.map_err(io_error)?;
    if chunk.is_empty() {
        return Err(io_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "a segment's file ended before its bytes",
        )));
    }
    Ok(Some(chunk))
}
