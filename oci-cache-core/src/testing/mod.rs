//! Test doubles for code built on this crate (feature `testing`).
//!
//! One set, shared by this crate's unit tests, the http crate's tests, the
//! benches, and any embedder's tests: [`FakeUpstream`], a scripted in-process
//! upstream that counts and records calls. The storage conformance suite is
//! in [`storage::conformance`](crate::storage::conformance).

mod upstream;

pub use upstream::{Asked, BlobScript, FakeUpstream, UpstreamCalls};
