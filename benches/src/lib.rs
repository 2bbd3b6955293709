//! Shared corpora for the criterion benchmarks in `benches/`.
