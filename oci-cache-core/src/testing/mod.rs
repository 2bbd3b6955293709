//! Test doubles for code built on this crate (feature `testing`).
//!
//! One set, shared by this crate's unit tests, the http crate's tests, the
//! benches, and any embedder's tests: [`FakeUpstream`], a scripted in-process
//! upstream that counts and records calls, and [`FaultyStorage`], memory
//! storage that fails writes like a full or read-only disk, or writes slowly,
//! and [`CountingStore`], an object store that counts requests as a bucket
//! bills them (and can ignore conditional writes, or be slow to answer them). The storage conformance suite is
//! in [`storage::conformance`](crate::storage::conformance).

mod blob_script;
mod object_store;
mod storage;
mod upstream;

pub use blob_script::{BlobScript, Cut};
pub use object_store::{CountingStore, RequestCounts};
pub use storage::{DiskState, FaultyStorage};
pub use upstream::{Asked, FakeUpstream, UpstreamCalls};
