//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c, or over TLS) on one
//! port, with graceful shutdown and a connection policy ([`ServerOptions`]): a
//! cap on concurrent connections, idle connections closed, HTTP/2
//! keep-alive pings.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use tokio_rustls::TlsAcceptor;

use crate::listening::{ListenerUpstream, Listening};
use crate::peer::PeerAddr;
use crate::Result;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long in-flight requests may run after shutdown was asked for.
const GRACE: Duration = Duration::from_secs(30);

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Most response bytes hyper queues per connection before it stops asking the
/// body for more (its default is ~400 KiB). A client that reads slowly then
/// holds at most this plus one chunk in memory: with 16 concurrent pulls (80
/// blob streams) the default let queued chunks make up half the peak RSS.
/// Also the largest request head accepted, far above what registry clients
/// send. Throughput on loopback is unchanged (measured with wrk).
const MAX_BUFFERED: usize = 64 * 1024;

/// How the server treats client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Most client connections served at once. Further clients wait in the
    /// listen backlog until one closes (logged once each time the cap is reached).
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed, on
    /// HTTP/1.1 and HTTP/2 alike (an idle HTTP/2 connection otherwise stays
    /// open for as long as its client likes).
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged.
    pub h2_keep_alive_interval: Duration,
    /// An HTTP/2 peer that does not answer a ping within this is dropped.
    pub h2_keep_alive_timeout: Duration,
}

impl ServerOptions {
    /// Checks [`max_connections`](Self::max_connections) and the timeouts
    /// against their ranges (see [`oci_cache_core::bounds`]); the error names
    /// the field and the range.
    pub fn validate(&self) -> oci_cache_core::Result<()> {
        use oci_cache_core::bounds::{count_in, duration_in, DAY};
        count_in(
            "max_connections",
            self.max_connections as u64,
            1..=1_000_000,
        )?;
        duration_in(
            "idle_timeout",
            self.idle_timeout,
            Duration::from_secs(1)..=DAY,
        )?;
        let keep_alive = Duration::from_secs(1)..=DAY;
        duration_in(
            "h2_keep_alive_interval",
            self.h2_keep_alive_interval,
            keep_alive.clone(),
        )?;
        duration_in(
            "h2_keep_alive_timeout",
            self.h2_keep_alive_timeout,
            keep_alive,
        )?;
        Ok(())
    }
}

impl ServerOptions {
    /// Refuses what cannot serve at all: no connections, or a zero timeout.
    fn check_usable(&self) -> oci_cache_core::Result<()> {
        use oci_cache_core::bounds::{count_in, duration_in, DAY};
        count_in("max_connections", self.max_connections as u64, 1..=u64::MAX)?;
        let positive = Duration::from_millis(1)..=DAY * 365;
        duration_in("idle_timeout", self.idle_timeout, positive.clone())?;
        duration_in(
            "h2_keep_alive_interval",
            self.h2_keep_alive_interval,
            positive.clone(),
        )?;
        duration_in(
            "h2_keep_alive_timeout",
            self.h2_keep_alive_timeout,
            positive,
        )?;
        Ok(())
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(30),
            h2_keep_alive_interval: Duration::from_secs(20),
            h2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `service` on `listener` with the default [`ServerOptions`] until
/// `shutdown` completes, then waits up to 30 s for in-flight requests (a
/// blob download may take longer; it is cut). Each request carries the
/// client's [`PeerAddr`] in its extensions. See [`serve_with`].
///
/// `service` is any hyper service: an [`OciService`](crate::OciService), or
/// one that wraps or routes to it (e.g. an axum `Router` through
/// `hyper_util::service::TowerToHyperService`).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_with(listener, service, None, ServerOptions::default(), shutdown).await
}

/// [`serve`] under the connection policy `options`, over TLS when `tls` is
/// given (see [`tls_server`](crate::tls_server): HTTP/2 or HTTP/1.1 as ALPN
/// agrees).
pub async fn serve_with<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_all(
        vec![Listening::new(listener)],
        service,
        tls,
        options,
        shutdown,
    )
    .await
}

/// [`serve_with`] on every listener of `listeners` at once, under one
/// connection policy (`max_connections` counts them all). Options that
/// cannot serve (no connections, a zero timeout) are refused before
/// anything is served. A request that
/// arrives on a listener with a default upstream carries it as a
/// [`ListenerUpstream`] extension, beside its [`PeerAddr`].
pub async fn serve_all<S, B>(
    listeners: Vec<Listening>,
    service: S,
    tls: Option<TlsAcceptor>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // A zero timeout would make hyper panic, zero connections would serve
    // nobody. (The config's narrower ranges, `validate`, are for people;
    // embedders and tests may want a 300 ms idle timeout.)
    options.check_usable()?;
    // One stream of accepted connections from every listener, each tagged
    // with its listener's upstream.
    let mut incoming = futures::stream::select_all(listeners.into_iter().map(|listening| {
        let upstream = listening.default_upstream.map(ListenerUpstream);
        Box::pin(futures::stream::unfold(
            (listening.listener, upstream),
            |(listener, upstream)| async move {
                let accepted = listener.accept().await;
                let tagged = (accepted, upstream.clone());
                Some((tagged, (listener, upstream)))
            },
        ))
    }));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer lets hyper drop clients that never finish sending their headers.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUFFERED);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(options.h2_keep_alive_interval))
        .keep_alive_timeout(options.h2_keep_alive_timeout)
        .max_send_buf_size(MAX_BUFFERED);
    let builder = Arc::new(builder);
    let max_connections = options
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut at_limit = false;
    tokio::pin!(shutdown);
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                at_limit = false;
                permit
            }
            Err(_) => {
                if !at_limit {
                    at_limit = true;
                    tracing::warn!(
                        max_connections,
                        "client connection limit reached; new connections wait until one \
                         closes (raise max_connections if this is normal load)"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer, upstream) = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some((Ok((stream, peer)), upstream)) => (stream, peer, upstream),
                Some((Err(e), _)) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let inner = service.clone();
        let with_peer = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(PeerAddr(peer));
            if let Some(upstream) = &upstream {
                request.extensions_mut().insert(upstream.clone());
            }
            inner.call(request)
        });
        let tracked = Tracked {
            inner: with_peer,
            activity: Arc::clone(&activity),
        };
        let builder = Arc::clone(&builder);
        let tls = tls.clone();
        let mut closing_rx = closing_rx.clone();
        let idle_timeout = options.idle_timeout;
        tokio::spawn(async move {
            // Held until the connection ends: the slot counts toward max_connections.
            let _permit = permit;
            // One loop for both transports; their connection types differ.
            macro_rules! drive {
                ($connection:expr) => {{
                    let connection = $connection;
                    tokio::pin!(connection);
                    let mut asked_to_close = false;
                    loop {
                        tokio::select! {
                            result = connection.as_mut() => {
                                if let Err(e) = result {
                                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                                }
                                break;
                            }
                            () = activity.idle_for(idle_timeout), if !asked_to_close => {
                                tracing::debug!(%peer, ?idle_timeout, "closing an idle connection");
                                connection.as_mut().graceful_shutdown();
                                asked_to_close = true;
                            }
                            _ = closing_rx.changed(), if !asked_to_close => {
                                connection.as_mut().graceful_shutdown();
                                asked_to_close = true;
                            }
                        }
                    }
                }};
            }
            match tls {
                None => drive!(builder
                    .serve_connection(TokioIo::new(stream), tracked)
                    .into_owned()),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                        // A CA validating TLS-ALPN-01: the handshake was the
                        // answer, no HTTP follows (RFC 8737 section 3).
                        tracing::debug!(%peer, "answered an ACME TLS-ALPN-01 validation");
                        return;
                    }
                    drive!(builder
                        .serve_connection(TokioIo::new(stream), tracked)
                        .into_owned())
                }
            }
        });
    }
    drop(incoming);
    let _ = closing.send(true);
    // Every connection holds a slot: all slots back means all connections ended.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after {GRACE:?}; stopping anyway");
    }
    Ok(())
}

/// Requests in flight on one connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        InFlight(Arc::clone(self))
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if in_flight == 0 && since.elapsed() >= timeout {
                return;
            }
            // Busy: look again a timeout later; a request that ends resets `since`.
            // Checked: an embedder's idle timeout may be any Duration (the
            // configuration bounds it); past the clock's end, look again in a day.
            let from = if in_flight == 0 {
                since
            } else {
                Instant::now()
            };
            let wake = from
                .checked_add(timeout)
                .unwrap_or_else(|| Instant::now() + oci_cache_core::bounds::DAY);
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// One request in flight, from its arrival until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

/// The service, counting requests in flight for the idle timeout.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it ends.
struct TrackedBody<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: HttpBody> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<B::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
