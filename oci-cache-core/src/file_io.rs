//! Reading ranges of local files from async code.
//!
//! A warm blob is almost always in the page cache, and handing every chunk to
//! tokio's blocking pool then costs more than the copy itself: a profile of
//! the warm-blob benchmark spent over a quarter of the server's CPU waking
//! pool threads and switching to them. So on Linux a chunk is first read on
//! the calling worker with `preadv2(RWF_NOWAIT)`, which answers from the page
//! cache or refuses with `EAGAIN` instead of waiting for the disk; only a
//! refused read goes to the blocking pool. Elsewhere, every read does.
//!
//! Each chunk gets a fresh buffer, freed as soon as the consumer drops it:
//! reusing one buffer per reader saved little CPU but kept a chunk alive per
//! open stream, which 16 concurrent pulls (80 streams) turned into a third of
//! the process's peak RSS.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Reads chunks of one file at given offsets; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct ChunkReader {
    file: Arc<File>,
    /// Cleared when the kernel or filesystem does not take `RWF_NOWAIT`.
    try_nowait: bool,
}

impl ChunkReader {
    pub(crate) fn new(file: Arc<File>) -> Self {
        ChunkReader {
            file,
            try_nowait: cfg!(target_os = "linux"),
        }
    }

    /// Reads up to `len` bytes at offset `at`. Fewer bytes come back when only
    /// part of the range is cached or the file ends; none means end of file.
    pub(crate) async fn read_at(&mut self, at: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        if self.try_nowait {
            let mut buf = BytesMut::zeroed(len);
            match read_cached(&self.file, &mut buf, at) {
                Ok(Some(n)) => {
                    buf.truncate(n);
                    return Ok(buf.freeze());
                }
                Ok(None) => {}
                Err(e) if is_unsupported(&e) => self.try_nowait = false,
                Err(e) => return Err(e),
            }
        }
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || read_blocking(&file, at, len))
            .await
            .map_err(io::Error::other)?
    }
}

/// `Some(n)` when the page cache had bytes at `at` (`Some(0)`: end of file),
/// `None` when reading would have waited for the disk.
#[cfg(target_os = "linux")]
fn read_cached(file: &File, buf: &mut [u8], at: u64) -> io::Result<Option<usize>> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut slices = [io::IoSliceMut::new(buf)];
    loop {
        return match preadv2(file, &mut slices, at, ReadWriteFlags::NOWAIT) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::AGAIN) => Ok(None),
            Err(Errno::INTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _buf: &mut [u8], _at: u64) -> io::Result<Option<usize>> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Kernels before 4.14, and some filesystems, refuse the flag itself.
fn is_unsupported(e: &io::Error) -> bool {
    const EOPNOTSUPP: i32 = 95;
    const EINVAL: i32 = 22;
    const ENOSYS: i32 = 38;
    e.kind() == io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(EOPNOTSUPP | EINVAL | ENOSYS))
}

/// Reads up to `len` bytes at `at`, waiting for the disk as needed; shorter
/// only at end of file.
pub(crate) fn read_blocking(file: &File, at: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match read_at(file, &mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

/// Bytes an unprivileged writer can still store on the filesystem holding
/// `dir`; `None` where that cannot be asked.
#[cfg(target_os = "linux")]
pub fn free_space(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(target_os = "linux"))]
pub fn free_space(_dir: &std::path::Path) -> Option<u64> {
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
        Arc::new(file)
    }

    /// Reads `[at, end)` the way a stream does: chunk after chunk.
    async fn read_range(reader: &mut ChunkReader, mut at: u64, end: u64, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while at < end {
            let want = chunk.min(usize::try_from(end - at).unwrap());
            let got = reader.read_at(at, want).await.unwrap();
            assert!(!got.is_empty(), "early end of file at {at}");
            at += got.len() as u64;
            out.extend_from_slice(&got);
        }
        out
    }

    #[tokio::test]
    async fn reads_exact_ranges_and_keeps_chunks_independent() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut reader = ChunkReader::new(file_with(&content));
        assert_eq!(read_range(&mut reader, 0, 300_000, 65_536).await, content);
        assert_eq!(
            read_range(&mut reader, 1_000, 200_001, 4_096).await,
            content[1_000..200_001]
        );
        // A chunk still held by the consumer keeps its bytes when the next is read.
        let held = reader.read_at(0, 10).await.unwrap();
        let next = reader.read_at(10, 10).await.unwrap();
        assert_eq!(&held[..], &content[..10]);
        assert_eq!(&next[..], &content[10..20]);
    }

    #[tokio::test]
    async fn end_of_file_is_an_empty_read() {
        let mut reader = ChunkReader::new(file_with(b"abc"));
        assert_eq!(&reader.read_at(1, 100).await.unwrap()[..], b"bc");
        assert!(reader.read_at(3, 100).await.unwrap().is_empty());
        assert!(reader.read_at(10, 100).await.unwrap().is_empty());
        assert_eq!(&read_blocking(&reader.file, 0, 100).unwrap()[..], b"abc");
    }
}
