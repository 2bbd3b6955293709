//! FsStorage write + read of a 64 MiB blob against plain `std::fs` on the same disk.
//!
//! `std_fs` (write, read) and `std_fs_chunked` (the same in 1 MiB chunks
//! with a reused read buffer) are the limits for `fs_storage_no_fsync`; the
//! durable default `fs_storage` fsyncs before publishing, so its limit is
//! `std_fs_fsync` (write, fsync, read). Every variant deletes the file at the
//! end of the iteration, so each one starts from the same empty state.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;
use oci_cache_core::digest::Digest;
use oci_cache_core::storage::{FsOptions, FsStorage, Storage};

const SIZE: usize = 64 * 1024 * 1024;
/// What an upstream body typically yields per chunk after hyper's buffering.
const CHUNK: usize = 1024 * 1024;

fn data() -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(out)
}

async fn round_trip(storage: &FsStorage, digest: &Digest, data: &Bytes) {
    let chunks: Vec<_> = (0..SIZE)
        .step_by(CHUNK)
        .map(|at| Ok(data.slice(at..at + CHUNK)))
        .collect();
    let written = storage
        .blob_write(
            digest,
            Some(SIZE as u64),
            futures::stream::iter(chunks).boxed(),
        )
        .await
        .unwrap();
    assert_eq!(written, SIZE as u64);
    let mut stream = storage.blob_read(digest, None).await.unwrap().stream;
    let mut read = 0;
    while let Some(chunk) = stream.next().await {
        read += std::hint::black_box(chunk.unwrap()).len();
    }
    assert_eq!(read, SIZE);
    storage.blob_delete(digest).await.unwrap();
}

fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = data();
    let digest = Digest::sha256_of(&data);
    let dir = tempfile::tempdir().unwrap();

    let mut group = c.benchmark_group("storage_write_read_64MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);

    let path = dir.path().join("plain");
    group.bench_function("std_fs", |b| {
        b.iter(|| {
            std::fs::write(&path, &data).unwrap();
            let back = std::fs::read(&path).unwrap();
            assert_eq!(back.len(), SIZE);
            std::fs::remove_file(&path).unwrap();
        })
    });
    // The strongest limit: the same 1 MiB chunks FsStorage sees, and a
    // reused read buffer (no 64 MiB allocation to fault in on every read).
    group.bench_function("std_fs_chunked", |b| {
        let mut buf = vec![0_u8; CHUNK];
        b.iter(|| {
            let mut file = std::fs::File::create(&path).unwrap();
            for at in (0..SIZE).step_by(CHUNK) {
                file.write_all(&data[at..at + CHUNK]).unwrap();
            }
            drop(file);
            let mut file = std::fs::File::open(&path).unwrap();
            let mut read = 0;
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                read += std::hint::black_box(&buf[..n]).len();
            }
            assert_eq!(read, SIZE);
            std::fs::remove_file(&path).unwrap();
        })
    });
    group.bench_function("std_fs_fsync", |b| {
        b.iter(|| {
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(&data).unwrap();
            file.sync_all().unwrap();
            drop(file);
            let back = std::fs::read(&path).unwrap();
            assert_eq!(back.len(), SIZE);
            std::fs::remove_file(&path).unwrap();
        })
    });

    for (name, durable) in [("fs_storage_no_fsync", false), ("fs_storage", true)] {
        let root = dir.path().join(name);
        let options = FsOptions::default().with_durable(durable);
        let store = runtime
            .block_on(FsStorage::open_with(root, options))
            .unwrap();
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| round_trip(&store, &digest, &data))
        });
    }
    group.finish();
}

criterion_group!(benches, storage);
criterion_main!(benches);
