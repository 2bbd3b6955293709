//! The engine's tunables: [`CacheOptions`].

use std::path::PathBuf;
use std::time::Duration;

use super::{FillRetry, FillSegments};
#[cfg(doc)]
use crate::evict::DiskBudget;
use crate::Result;

/// Tunables of the engine.
///
/// Deserializes from a table whose keys are the field names, every one
/// optional (durations as `"30s"`, `"5m"`), e.g. a config file's `[cache]`:
///
/// ```
/// # use oci_cache_core::cache::CacheOptions;
/// let options: CacheOptions = serde_json::from_str(r#"{"tag_ttl": "1m", "fill_window": 65536}"#)?;
/// assert_eq!(options.tag_ttl.as_secs(), 60);
/// assert_eq!(options.max_manifest_size, CacheOptions::default().max_manifest_size);
/// # Ok::<_, serde_json::Error>(())
/// ```
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheOptions {
    /// How long a tag → digest mapping is trusted before a HEAD upstream.
    #[serde(with = "crate::duration")]
    pub tag_ttl: Duration,
    /// Largest manifest accepted from upstream.
    pub max_manifest_size: u64,
    /// Bytes of each blob fill kept in memory for the clients reading it; older
    /// bytes are read back from storage's staging file (filesystem storage)
    /// or a spool file. Bounds memory per fill whatever
    /// the blob size. Default 256 KiB: clients that keep up read from memory,
    /// and a larger window only raised peak RSS (five 5-layer cold pulls in a
    /// row: 15.8 MiB peak at 256 KiB, 19.9 MiB at 1 MiB).
    pub fill_window: usize,
    /// Largest blob accepted from upstream, whether announced by its
    /// `Content-Length` or counted as it arrives (a body without a length is
    /// cut here, so an endless body cannot fill the disk). Default 64 GiB:
    /// above the largest layer registries accept (ECR's limit is 52,000 MiB,
    /// Docker Hub's 10 GB), so no real image is refused.
    pub max_blob_size: u64,
    /// Directory for blob fill spool files (anonymous, removed when the fill is
    /// done); `None` is the system temporary directory. Only fills whose
    /// storage cannot be read before its commit (object stores, memory) or
    /// that store nothing (fleet relays) spool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// Cap on stored blob bytes (`"150MiB"`, `"50GiB"` or a number); `None`
    /// keeps everything. The engine tracks uses against it in its
    /// [`DiskBudget`]; an
    /// [`Evictor`](crate::evict::Evictor) enforces it.
    #[serde(
        deserialize_with = "crate::evict::deserialize_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
    /// Images never evicted: [`PinPattern`](crate::evict::PinPattern)s over
    /// `upstream/repository:tag`.
    pub pin: Vec<crate::evict::PinPattern>,
    /// How a fill whose upstream connection was cut resumes
    /// (`[cache.fill_retry]`): attempts per endpoint and backoff.
    pub fill_retry: FillRetry,
    /// How a large cold blob is fetched over several ranged connections
    /// (`[cache.fill_segments]`): connections per blob and the size from which.
    pub fill_segments: FillSegments,
    /// Whether a `Range` request for a blob neither stored nor being
    /// filled starts the full verified fill in the background (default
    /// `true`: the next request is a hit). `false` forwards such a range
    /// upstream alone and stores nothing, for sites whose clients read a
    /// few ranges of huge blobs (lazy pulling) and should not cache them
    /// whole; a range of a blob under fill still joins that fill.
    pub fill_on_range: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            tag_ttl: Duration::from_secs(300),
            max_manifest_size: 4 * 1024 * 1024,
            fill_window: 256 * 1024,
            max_blob_size: 64 * 1024 * 1024 * 1024,
            spool_dir: None,
            max_size: None,
            pin: Vec::new(),
            fill_retry: FillRetry::default(),
            fill_segments: FillSegments::default(),
            fill_on_range: true,
        }
    }
}

impl CacheOptions {
    /// Sets the tag TTL.
    pub fn with_tag_ttl(mut self, ttl: Duration) -> Self {
        self.tag_ttl = ttl;
        self
    }

    /// Sets the largest manifest accepted from upstream.
    pub fn with_max_manifest_size(mut self, bytes: u64) -> Self {
        self.max_manifest_size = bytes;
        self
    }

    /// Sets how many bytes of each blob fill stay in memory.
    pub fn with_fill_window(mut self, bytes: usize) -> Self {
        self.fill_window = bytes;
        self
    }

    /// Sets the largest blob accepted from upstream.
    pub fn with_max_blob_size(mut self, bytes: u64) -> Self {
        self.max_blob_size = bytes;
        self
    }

    /// Sets the cap on stored blob bytes.
    pub fn with_max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Adds a pin pattern.
    pub fn with_pin(mut self, pin: crate::evict::PinPattern) -> Self {
        self.pin.push(pin);
        self
    }

    /// Sets how cut fills are retried.
    pub fn with_fill_retry(mut self, retry: FillRetry) -> Self {
        self.fill_retry = retry;
        self
    }

    /// Sets how large cold blobs are fetched over several connections.
    pub fn with_fill_segments(mut self, segments: FillSegments) -> Self {
        self.fill_segments = segments;
        self
    }

    /// Sets whether a range of a cold blob starts the full fill.
    pub fn with_fill_on_range(mut self, fill: bool) -> Self {
        self.fill_on_range = fill;
        self
    }

    /// Sets the directory for blob fill spool files.
    pub fn with_spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Checks every duration and size against its allowed range (see
    /// [`bounds`](crate::bounds)); the error names the field and the range.
    pub fn validate(&self) -> Result<()> {
        use crate::bounds::{duration_in, size_in, GIB, KIB, MIB, PIB};
        duration_in("tag_ttl", self.tag_ttl, Self::TAG_TTL)?;
        size_in("max_manifest_size", self.max_manifest_size, KIB..=64 * MIB)?;
        size_in("fill_window", self.fill_window as u64, 4 * KIB..=GIB)?;
        size_in("max_blob_size", self.max_blob_size, KIB..=PIB)?;
        size_in(
            "fill_segments.min_size",
            self.fill_segments.min_size,
            MIB..=PIB,
        )?;
        if let Some(max) = self.max_size {
            size_in("max_size", max, Self::MAX_SIZE)?;
        }
        Ok(())
    }

    /// The allowed [`tag_ttl`](Self::tag_ttl): a second to a year.
    pub const TAG_TTL: std::ops::RangeInclusive<Duration> =
        Duration::from_secs(1)..=crate::bounds::YEAR;
    /// The allowed [`max_size`](Self::max_size): 1 MiB to 1 EiB.
    pub const MAX_SIZE: std::ops::RangeInclusive<u64> = crate::bounds::MIB..=crate::bounds::EIB;
}
