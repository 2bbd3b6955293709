//! The floor of a cold pull on this machine, measured in the same run as the
//! figures it is compared with: what hashing the bytes once (the fill must)
//! and copying them once through the page cache (read a file, write a file)
//! cost in CPU. "Fill CPU per cold MiB" is shown as a multiple of their sum.
//!
//! Both are timed in CPU seconds of the measuring thread, not wall time, so
//! the other work on a shared machine does not move them much; each is the
//! best of [`REPEATS`] runs (a floor is what the machine can do).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The chunk size of the filesystem storage's reads and of these runs
/// (`IO_CHUNK` in oci-cache-core's filesystem backend).
const CHUNK: usize = 128 * 1024;
/// Bytes hashed and copied per run.
const RUN_MIB: usize = 128;
const REPEATS: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;

/// This machine's floor, in MiB per CPU second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// SHA-256 (the `sha2` crate the fill uses) over [`CHUNK`]-sized updates.
    pub(crate) sha256_mib_s: f64,
    /// Read a file that is in the page cache and write it to another file,
    /// in [`CHUNK`]-sized calls (user and system CPU).
    pub(crate) copy_mib_s: f64,
}

impl Floor {
    /// Measures both on files under `work` (removed again).
    pub(crate) fn measure(work: &Path) -> Floor {
        let data = pseudo_random(CHUNK);
        let sha256_mib_s = best_of(|| hash_run(&data));
        let source = work.join("floor-source");
        let target = work.join("floor-target");
        {
            let mut f = File::create(&source).unwrap();
            for _ in 0..RUN_MIB * (1 << 20) / CHUNK {
                f.write_all(&data).unwrap();
            }
        }
        // Read once untimed so the timed runs find it in the page cache.
        copy_run(&source, &target);
        let copy_mib_s = best_of(|| copy_run(&source, &target));
        let _ = std::fs::remove_file(&source);
        let _ = std::fs::remove_file(&target);
        Floor {
            sha256_mib_s,
            copy_mib_s,
        }
    }

    /// CPU seconds per MiB of hashing it once and copying it once.
    pub(crate) fn cpu_per_mib(&self) -> f64 {
        1.0 / self.sha256_mib_s + 1.0 / self.copy_mib_s
    }
}

/// The highest MiB per CPU second of [`REPEATS`] runs of `run` (which
/// returns the MiB it processed).
fn best_of(mut run: impl FnMut() -> f64) -> f64 {
    (0..REPEATS)
        .map(|_| {
            // Thread CPU time moves in 10 ms ticks: a single run can take
            // less than one (then it read 0 and the figure was the run's
            // MiB / 10 ms), so runs repeat until 50 ticks have passed.
            let before = thread_cpu_seconds();
            let mut mib = 0.0;
            while thread_cpu_seconds() - before < 0.5 {
                mib += run();
            }
            mib / (thread_cpu_seconds() - before)
        })
        .fold(0.0, f64::max)
}

fn hash_run(chunk: &[u8]) -> f64 {
    let mut hasher = Sha256::new();
    let chunks = RUN_MIB * (1 << 20) / chunk.len();
    for _ in 0..chunks {
        hasher.update(chunk);
    }
    std::hint::black_box(hasher.finalize());
    (chunks * chunk.len()) as f64 / MIB
}

fn copy_run(source: &Path, target: &Path) -> f64 {
    let mut from = File::open(source).unwrap();
    let mut to = File::create(target).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0usize;
    loop {
        let n = from.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).unwrap();
        total += n;
    }
    total as f64 / MIB
}

/// User + system CPU seconds of the calling thread.
fn thread_cpu_seconds() -> f64 {
    crate::tools::stat_cpu_seconds("/proc/thread-self/stat")
}

/// Bytes that do not compress or repeat in a way any layer would not.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
