//! The observer sees what really happened: request events with the bytes
//! actually sent (reported when the body ends or is dropped), upstream
//! attempts and blob bodies with their bytes, and blob fills.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use oci_cache_core::digest::Digest;
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::observe::{
    FillEvent, FillPhase, Observer, RequestEvent, UpstreamEvent, UpstreamOperation, UpstreamOutcome,
};
use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::{Mirror, OciService, ProxyConfig, UpstreamOptions};

use crate::support::{mirrors, MockRegistry, Reply};

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Request {
        route: &'static str,
        cache: Option<CacheOutcome>,
        status: u16,
        bytes_sent: u64,
        completed: bool,
    },
    Upstream {
        operation: UpstreamOperation,
        outcome: UpstreamOutcome,
        bytes: u64,
        body_ended: bool,
    },
    Fill(FillPhase),
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Observer for Recorder {
    fn request(&self, e: &RequestEvent) {
        self.0.lock().unwrap().push(Seen::Request {
            route: e.route,
            cache: e.cache,
            status: e.status,
            bytes_sent: e.bytes_sent,
            completed: e.completed,
        });
    }
    fn upstream(&self, e: &UpstreamEvent) {
        self.0.lock().unwrap().push(Seen::Upstream {
            operation: e.operation,
            outcome: e.outcome,
            bytes: e.bytes,
            body_ended: e.body_ended,
        });
    }
    fn fill(&self, e: &FillEvent) {
        self.0.lock().unwrap().push(Seen::Fill(e.phase.clone()));
    }
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Waits until the fill reported its end (it runs detached from requests).
    async fn fill_ended(&self) {
        for _ in 0..200 {
            let ended = self.0.lock().unwrap().iter().any(|s| {
                matches!(
                    s,
                    Seen::Fill(FillPhase::Stored { .. } | FillPhase::Failed { .. })
                )
            });
            if ended {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the fill never reported its end");
    }
}

fn service(origin: &MockRegistry, recorder: &Arc<Recorder>) -> OciService {
    Mirror::builder()
        .upstreams(mirrors(&origin.url()))
        .storage(Arc::new(MemoryStorage::new()))
        .upstream_options(UpstreamOptions::default().with_proxy(ProxyConfig::Direct))
        .observer(recorder.clone())
        .build()
        .unwrap()
        .service()
}

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

fn blob_attempt(bytes: u64, body_ended: bool) -> Seen {
    Seen::Upstream {
        operation: UpstreamOperation::BlobGet,
        outcome: UpstreamOutcome::Ok,
        bytes,
        body_ended,
    }
}

#[tokio::test]
async fn miss_then_hit_report_real_bytes_in_order() {
    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let len = blob.len() as u64;
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob.clone()).header("content-length", &len.to_string()));
    let recorder = Arc::new(Recorder::default());
    let svc = service(&origin, &recorder);
    let uri = format!("/v2/library/alpine/blobs/{digest}");

    let body = svc.handle(get(&uri)).await.into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes().len() as u64, len);
    recorder.fill_ended().await;
    let events = recorder.take();
    // The engine's fill and the client's request run concurrently: check the
    // order within each source, and every event exactly once.
    let fills: Vec<&Seen> = events
        .iter()
        .filter(|s| matches!(s, Seen::Fill(_)))
        .collect();
    assert_eq!(
        fills,
        [
            &Seen::Fill(FillPhase::Started),
            &Seen::Fill(FillPhase::Stored { bytes: len })
        ]
    );
    let upstream: Vec<&Seen> = events
        .iter()
        .filter(|s| matches!(s, Seen::Upstream { .. }))
        .collect();
    assert_eq!(
        upstream,
        [&blob_attempt(0, false), &blob_attempt(len, true)]
    );
    let requests: Vec<&Seen> = events
        .iter()
        .filter(|s| matches!(s, Seen::Request { .. }))
        .collect();
    let miss = Seen::Request {
        route: "blob",
        cache: Some(CacheOutcome::Miss),
        status: 200,
        bytes_sent: len,
        completed: true,
    };
    assert_eq!(requests, [&miss]);
    assert_eq!(events.len(), 5, "{events:?}");

    let body = svc.handle(get(&uri)).await.into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes().len() as u64, len);
    let hit = Seen::Request {
        route: "blob",
        cache: Some(CacheOutcome::Hit),
        status: 200,
        bytes_sent: len,
        completed: true,
    };
    assert_eq!(recorder.take(), [hit]);
    assert_eq!(origin.count(), 1);

    // An error answer is reported too, with its real (small) body.
    let answer = svc.handle(get("/v2/library/alpine/nonsense/x")).await;
    let sent = answer.into_body().collect().await.unwrap().to_bytes().len() as u64;
    let events = recorder.take();
    assert!(
        matches!(events.as_slice(), [Seen::Request { route: "unknown", cache: None, status: 404, bytes_sent, completed: true }] if *bytes_sent == sent && sent > 0),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_blob_is_reported_cut_and_the_fill_still_stores() {
    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let len = blob.len() as u64;
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob).header("content-length", &len.to_string()));
    let recorder = Arc::new(Recorder::default());
    let svc = service(&origin, &recorder);

    let mut body = svc
        .handle(get(&format!("/v2/library/alpine/blobs/{digest}")))
        .await
        .into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty() && (first.len() as u64) < len);
    drop(body); // what hyper does when the client disconnects

    let cut: Vec<Seen> = recorder
        .take()
        .into_iter()
        .filter(|s| matches!(s, Seen::Request { .. }))
        .collect();
    assert_eq!(
        cut,
        [Seen::Request {
            route: "blob",
            cache: Some(CacheOutcome::Miss),
            status: 200,
            bytes_sent: first.len() as u64,
            completed: false,
        }]
    );
    recorder.fill_ended().await;
    let events = recorder.take();
    assert!(
        events.contains(&Seen::Fill(FillPhase::Stored { bytes: len })),
        "{events:?}"
    );
    assert!(events.contains(&blob_attempt(len, true)), "{events:?}");
    assert_eq!(origin.count(), 1);
}

/// The same over a real socket: the client reads a little and hangs up; the
/// server reports the request cut, with fewer bytes than the blob.
#[tokio::test]
async fn a_hang_up_over_a_socket_is_reported_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..32_000_000u32).map(|i| (i % 249) as u8).collect();
    let len = blob.len() as u64;
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob).header("content-length", &len.to_string()));
    let recorder = Arc::new(Recorder::default());
    let server = Server::start(&origin, &recorder).await;

    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /v2/library/alpine/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64 * 1024];
    let n = socket.read(&mut first).await.unwrap();
    assert!(n > 0);
    drop(socket);

    let (bytes_sent, completed) = recorder
        .request_reported()
        .await
        .expect("the cut request was reported");
    assert!(!completed);
    assert!(bytes_sent > 0 && bytes_sent < len, "{bytes_sent} of {len}");
    recorder.fill_ended().await;
    assert_eq!(origin.count(), 1);
    server.stop().await;
}

/// Regression: hyper stops polling a body once it has written its
/// `Content-Length` bytes, so a blob read whole over a kept-alive connection
/// was reported `completed=false` (seen in the access log of the podman e2e).
#[tokio::test]
async fn a_whole_blob_over_a_socket_is_reported_complete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let len = blob.len() as u64;
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob).header("content-length", &len.to_string()));
    let recorder = Arc::new(Recorder::default());
    let server = Server::start(&origin, &recorder).await;

    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /v2/library/alpine/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    // Read the head, then exactly the body, and keep the connection open.
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let body_start = loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed early");
        received.extend_from_slice(&chunk[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    while (received.len() - body_start) < len as usize {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the whole body");
        received.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(Digest::sha256_of(&received[body_start..]), digest);

    assert_eq!(recorder.request_reported().await, Some((len, true)));
    drop(socket);
    recorder.fill_ended().await;
    server.stop().await;
}

/// The service on a real socket on 127.0.0.1, until [`Server::stop`].
struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<oci_cache_http::Result<()>>,
}

impl Server {
    async fn start(origin: &MockRegistry, recorder: &Arc<Recorder>) -> Server {
        let svc = service(origin, recorder);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(oci_cache_http::serve(listener, svc, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

impl Recorder {
    /// (bytes sent, completed) of the first request reported, waiting up to 10 s.
    async fn request_reported(&self) -> Option<(u64, bool)> {
        for _ in 0..400 {
            let seen = self.0.lock().unwrap().iter().find_map(|s| match s {
                Seen::Request {
                    bytes_sent,
                    completed,
                    ..
                } => Some((*bytes_sent, *completed)),
                _ => None,
            });
            if seen.is_some() {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}
