//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c, or over TLS) on one
//! port, with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use tokio_rustls::TlsAcceptor;

use crate::client_auth::PeerAddr;
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

/// Serves `service` on `listener` until `shutdown` completes, then waits up
/// to 30 s for in-flight requests (a blob download may take longer; it is cut).
/// Each request carries the client's [`PeerAddr`] in its extensions.
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
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_tls(listener, service, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given (see [`tls_server`](crate::tls_server)):
/// HTTP/2 or HTTP/1.1 as ALPN agrees.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
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
        .max_send_buf_size(MAX_BUFFERED);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let inner = service.clone();
                let with_peer = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    inner.call(request)
                });
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), with_peer);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
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
                            let connection = builder.serve_connection(TokioIo::new(stream), with_peer);
                            watcher.watch(connection.into_owned()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after {GRACE:?}; stopping anyway");
    }
    Ok(())
}
