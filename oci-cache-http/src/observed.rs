//! Reporting what was really sent: a response body that counts its bytes and
//! reports the request when it ends or is dropped, and the access log as an
//! observer of those reports.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use oci_cache_core::observe::{Observer, RequestEvent, SharedObserver};

use crate::body::Body;
use crate::Error;

/// A response body that reports its request once: when the last frame has
/// been handed out (or the last of its `Content-Length` bytes: hyper stops
/// polling a body once it has written that many), or when it is dropped
/// first (the client went away, or the stream failed), with `completed` false.
pub(crate) struct ObservedBody {
    inner: Body,
    /// The response's `Content-Length`, when it has one.
    length: Option<u64>,
    event: Option<RequestEvent>,
    started: Instant,
    observer: SharedObserver,
    /// The request's span, entered while reporting so the log line keeps its fields.
    span: tracing::Span,
}

impl ObservedBody {
    pub(crate) fn new(
        inner: Body,
        length: Option<u64>,
        event: RequestEvent,
        started: Instant,
        observer: SharedObserver,
        span: tracing::Span,
    ) -> Self {
        ObservedBody {
            inner,
            length,
            event: Some(event),
            started,
            observer,
            span,
        }
    }

    fn report(&mut self, completed: bool) {
        if let Some(mut event) = self.event.take() {
            event.completed = completed;
            event.duration = self.started.elapsed();
            let _entered = self.span.enter();
            self.observer.request(&event);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut all_sent = false;
                if let (Some(event), Some(data)) = (this.event.as_mut(), frame.data_ref()) {
                    event.bytes_sent += data.len() as u64;
                    all_sent = this.length == Some(event.bytes_sent);
                }
                // A blob stream hands out its last bytes only once they are
                // verified, so the whole length sent is a complete answer.
                if all_sent || this.inner.is_end_stream() {
                    this.report(true);
                }
            }
            Poll::Ready(None) => this.report(true),
            Poll::Ready(Some(Err(_))) => this.report(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 304, errors) may be dropped without being polled.
        let completed = self.inner.is_end_stream();
        self.report(completed);
    }
}

/// The one-line access log as an observer: one `info` line per request when
/// its body has ended, in the request's span, with the bytes actually sent
/// and the time to the last byte; cut requests say `completed=false`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AccessLog;

impl Observer for AccessLog {
    fn request(&self, event: &RequestEvent) {
        // Client address, user agent, route, repository, upstream and
        // reference are fields of the request span this runs in; not
        // repeated here.
        tracing::info!(
            path = %event.path,
            cache = %event.cache.map_or("-", |c| c.as_str()),
            status = event.status,
            bytes = event.bytes_sent,
            duration_ms = event.duration.as_millis() as u64,
            completed = event.completed,
            "request"
        );
    }
}
