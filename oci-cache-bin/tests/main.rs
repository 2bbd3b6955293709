//! Integration tests of the `oci-cache` binary, one test binary with topic
//! modules (run: `cargo test -p oci-cache-bin --test main`).
//!
//! The end-to-end tests use real parts on 127.0.0.1 only: Debian's
//! `docker-registry` as the origin and `skopeo` as the client
//! (`scripts/install-test-deps` installs both).

// Tests report failures by panicking; the library lint policy does not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

mod e2e;
mod support;
