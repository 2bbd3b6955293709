//! Integration tests of the `oci-cache` binary, one test binary with topic
//! modules (run: `cargo test -p oci-cache-bin --test main`).
//!
//! The end-to-end tests use real parts on 127.0.0.1 only: Debian's
//! `docker-registry` as the origin and `skopeo` as the client
//! (`scripts/install-test-deps` installs both), containerd's `ctr` with a
//! hosts.toml mirror where containerd can run (as root), and moto's S3 server.
//! A missing tool skips its test loudly, or fails it under `CI=true`.
//!
//! Environment:
//! - `OCI_CACHE_BIN`: the binary the `oci_cache` cases run (default: the one
//!   cargo built for this test run; `scripts/e2e-smoke` points it at release);
//! - `E2E_BIG_LAYERS`, `E2E_BIG_LAYER_MIB`: shape of the big image
//!   (default 4 × 26 MiB).

// Tests report failures by panicking; the library lint policy does not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

mod cli;
mod docs;
mod e2e;
mod support;
