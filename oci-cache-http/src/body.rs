//! The response body type and its constructors.
//!
//! Blob bodies are storage or upstream streams, which are `Send` but not
//! `Sync`, hence the unsync box.

use bytes::Bytes;
use futures::TryStreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use oci_cache_core::storage::ByteStream;

use crate::Error;

/// The body of every response this crate produces.
pub type Body = UnsyncBoxBody<Bytes, Error>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body (HEAD, 304).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body streaming `stream` without buffering it.
pub fn from_stream(stream: ByteStream) -> Body {
    StreamBody::new(stream.map_ok(Frame::data).map_err(Error::from)).boxed_unsync()
}
