//! Digest verification throughput against raw SHA-256, its limit: the
//! verifier's bookkeeping (size, expected digest) should cost nothing visible.

// criterion_group! generates an undocumented fn; a failed set-up should stop the bench.
#![allow(missing_docs, clippy::panic)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oci_cache_core::digest::{Digest, DigestVerifier};
use sha2::{Digest as _, Sha256};

/// Blob bytes per iteration, fed in chunks like a network body.
const TOTAL: usize = 16 << 20;

fn bench_digest(c: &mut Criterion) {
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 31 % 251) as u8).collect();
    let digest = Digest::sha256_of(&data);
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    for chunk in [16 << 10, 1 << 20] {
        group.bench_with_input(
            BenchmarkId::new("raw_sha256", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let mut h = Sha256::new();
                    for piece in data.chunks(chunk) {
                        h.update(piece);
                    }
                    h.finalize()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("verifier", chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                let mut v = DigestVerifier::new(digest.clone(), Some(TOTAL as u64));
                for piece in data.chunks(chunk) {
                    v.update(piece).ok();
                }
                v.finish().ok()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_digest);
criterion_main!(benches);
