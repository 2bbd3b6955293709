//! The integration test binary of oci-cache-core: one module per topic
//! (`autotests = false` in Cargo.toml keeps it a single binary; the RSS
//! test is its own binary so nothing else runs in its process).

// A failing test should stop loudly at the line that failed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod floors;
mod reference_vectors;
mod storage;
