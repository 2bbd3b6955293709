//! Reference parsing throughput: our hand-written parser against oci-client's
//! regex-based one, over the real-world corpus in `oci_cache_benches::REFERENCES`.

// A corpus entry either parser refuses makes the comparison meaningless: stop.
#![allow(clippy::panic)]
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oci_cache_benches::REFERENCES;
use oci_cache_core::reference::Reference;
use std::hint::black_box;

fn reference(c: &mut Criterion) {
    // Both parsers must accept the whole corpus, or the comparison is unfair.
    for input in REFERENCES {
        if let Err(err) = Reference::parse(input) {
            panic!("oci-cache refuses corpus entry {input:?}: {err}");
        }
        if let Err(err) = input.parse::<oci_client::Reference>() {
            panic!("oci-client refuses corpus entry {input:?}: {err}");
        }
    }

    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Elements(REFERENCES.len() as u64));
    group.bench_function("oci_cache_core", |b| {
        b.iter(|| {
            for input in REFERENCES {
                let _ = black_box(Reference::parse(black_box(input)));
            }
        })
    });
    group.bench_function("oci_client", |b| {
        b.iter(|| {
            for input in REFERENCES {
                let _ = black_box(black_box(input).parse::<oci_client::Reference>());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, reference);
criterion_main!(benches);
