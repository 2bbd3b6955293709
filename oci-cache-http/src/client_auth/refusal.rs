//! Answering a refused request so that its connection stays usable.
//!
//! A client that pushes without credentials sends its body with the request
//! (`PUT` of a manifest, `PATCH` of a chunk) and retries with credentials on
//! the same connection after the `401`, as Go's `net/http` does. Answered
//! before its body was read, the connection could not carry another
//! request: hyper closed it after the response, without saying so, and the
//! retry met an `EOF`. So a small body is read and thrown away before the
//! answer; a large or slow one is not waited for, and the answer says
//! `Connection: close`, which the client honours by retrying on a new
//! connection.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;

use crate::body::Body;

/// Most request body bytes read and dropped to keep a connection open.
const MAX_DISCARD: u64 = 1024 * 1024;

/// How long a refused request's body may take to arrive.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// `refusal`, after reading and dropping `request`'s body when that is
/// cheap; with `Connection: close` (HTTP/1) when it is not.
pub(super) async fn answer<B>(request: Request<B>, mut refusal: Response<Body>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    // HTTP/2 ends one stream, never the connection, for an unread body.
    if request.version() > Version::HTTP_11 || request.body().is_end_stream() {
        return refusal;
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drained = match declared {
        Some(length) if length > MAX_DISCARD => false,
        _ => tokio::time::timeout(DISCARD_TIMEOUT, discard(request.into_body()))
            .await
            .unwrap_or(false),
    };
    if !drained {
        refusal
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

/// Reads `body` to its end; `false` past [`MAX_DISCARD`] bytes or on an error.
async fn discard<B>(body: B) -> bool
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > MAX_DISCARD {
                return false;
            }
        }
    }
    true
}
