//! Issue 17, hostile peers on the wire: lying or greedy upstreams (tag lists,
//! token lifetimes, Retry-After, non-manifests) and greedy clients
//! (connection count, idle HTTP/2 connections). Scripted upstreams and raw
//! sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use oci_cache_core::upstream::Upstream;
use oci_cache_core::Error;
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};

use crate::support::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const M: &[u8] = br#"{"schemaVersion":2}"#;

fn options() -> UpstreamOptions {
    UpstreamOptions::default().with_proxy(ProxyConfig::Direct)
}

fn client_with(origin: &MockRegistry, options: UpstreamOptions) -> Arc<HyperUpstream> {
    Arc::new(HyperUpstream::new(Arc::new(mirrors(&origin.url())), options).unwrap())
}

fn tag_page(tags: impl Iterator<Item = String>) -> String {
    let tags: Vec<String> = tags.collect();
    serde_json::json!({ "name": "library/alpine", "tags": tags }).to_string()
}

fn assert_too_large(err: Error, limit: u64) {
    match err {
        Error::TooLarge { limit: l, .. } => assert_eq!(l, limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

// ------------------------------------------------------------------ tag lists

#[tokio::test]
async fn a_huge_tag_list_stops_at_the_byte_cap() {
    let origin = MockRegistry::start().await;
    // 4 MiB of tags in one page against a 256 KiB cap.
    let huge = tag_page((0..300_000).map(|i| format!("tag-{i:012}")));
    assert!(huge.len() > 4 * 1024 * 1024);
    origin.push(Reply::ok(huge));
    let cap = 256 * 1024;
    let up = client_with(&origin, options().with_max_tag_list_bytes(cap));
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, cap);
}

#[tokio::test]
async fn the_byte_cap_covers_every_page() {
    let origin = MockRegistry::start().await;
    // Pages of ~100 KiB, each linking to the next: the old per-page cap let
    // 1000 of them (16 GiB) through.
    for page in 0..10 {
        origin.push(
            Reply::ok(tag_page((0..5_000).map(|i| format!("p{page}-{i:012}")))).header(
                "link",
                &format!("</v2/library/alpine/tags/list?last=p{page}>; rel=\"next\""),
            ),
        );
    }
    let cap = 256 * 1024;
    let up = client_with(&origin, options().with_max_tag_list_bytes(cap));
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, cap);
    assert_eq!(origin.count(), 3, "stops at the page that crosses the cap");
}

#[tokio::test]
async fn too_many_tags_is_an_error() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::ok(tag_page((0..11).map(|i| i.to_string()))));
    let up = client_with(&origin, options().with_max_tags(10));
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, 10);
}

#[tokio::test]
async fn n_and_last_go_upstream_and_one_more_tells_about_the_next_page() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::ok(tag_page(
        ["b", "c", "d"].iter().map(|t| t.to_string()),
    )));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answer = get(&svc, "/v2/library/alpine/tags/list?n=2&last=a").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["tags"], serde_json::json!(["b", "c"]));
    assert!(answer.header("link").unwrap().contains("last=c"));
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v2/library/alpine/tags/list?n=3&last=a");
}

#[tokio::test]
async fn concurrent_tag_list_requests_make_one_upstream_request() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::ok(tag_page(["1"].iter().map(|t| t.to_string())))),
    ));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answers =
        futures::future::join_all((0..10).map(|_| get(&svc, "/v2/library/alpine/tags/list"))).await;
    for answer in answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["tags"], serde_json::json!(["1"]));
    }
    assert_eq!(origin.count(), 1);
}

// ------------------------------------------------------------------ tokens, Retry-After, manifests

#[tokio::test]
async fn a_token_that_never_expires_does_not_panic() {
    let origin = MockRegistry::start().await;
    origin
        .push(Reply::status(401).header(
            "www-authenticate",
            &format!("Bearer realm=\"{}/token\",service=\"mock\"", origin.url()),
        ))
        .push(Reply::ok(
            r#"{"token":"t","expires_in":18446744073709551615}"#,
        ))
        .push(Reply::ok(M).header("content-type", OCI));
    let up = client_with(&origin, options());
    let fetched = get_alpine_manifest(&up).await.unwrap();
    assert_eq!(&fetched.bytes[..], M);
    assert_eq!(origin.seen()[2].header("authorization"), Some("Bearer t"));
}

#[tokio::test]
async fn retry_after_passed_to_clients_is_capped() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::status(429).header("retry-after", "31536000"));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
    assert_eq!(answer.status, 429);
    let secs: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(secs <= 600, "Retry-After {secs}");
}

#[tokio::test]
async fn a_manifest_answer_that_is_not_a_manifest_is_not_cached() {
    let origin = MockRegistry::start().await;
    let html = "<html><body>maintenance</body></html>";
    origin
        .push(Reply::ok(html).header("content-type", "text/html"))
        .push(Reply::ok(M).header("content-type", "application/octet-stream"))
        .push(Reply::ok(M).header("content-type", OCI));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    for _ in 0..2 {
        let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
        assert_ne!(answer.status, 200, "{:?}", answer.body);
        assert_ne!(&answer.body[..], html.as_bytes());
    }
    let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], M);
    assert_eq!(
        origin.count(),
        3,
        "each refused answer was asked again, not cached"
    );
}

#[tokio::test]
async fn responses_carry_nosniff() {
    let (svc, fake) = fake_service();
    fake.set_tag("docker.io", "library/alpine", "3", &[(OCI, M)]);
    for uri in [
        "/v2/",
        "/v2/library/alpine/manifests/3",
        "/v2/nope/x/y/manifests/3",
    ] {
        let answer = call(&svc, Method::GET, uri, &[]).await;
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{uri}: {}",
            answer.status
        );
    }
}

// ------------------------------------------------------------------ client connections

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<oci_cache_http::Result<()>>,
}

impl Server {
    async fn start(options: oci_cache_http::ServerOptions) -> Server {
        let (svc, _fake) = fake_service();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(oci_cache_http::serve_with(
            listener,
            svc,
            None,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// Sends `GET /v2/` on a raw socket and reads the whole response head and body.
async fn ping_v2(stream: &mut tokio::net::TcpStream) -> String {
    send_v2(stream).await;
    read_answer(stream).await
}

async fn send_v2(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: mirror\r\n\r\n")
        .await
        .unwrap();
}

#[tokio::test]
async fn options_out_of_range_are_refused_before_serving() {
    for (options, field) in [
        (
            oci_cache_http::ServerOptions {
                max_connections: 0,
                ..Default::default()
            },
            "max_connections",
        ),
        (
            oci_cache_http::ServerOptions {
                h2_keep_alive_interval: Duration::ZERO,
                ..Default::default()
            },
            "h2_keep_alive_interval",
        ),
    ] {
        let (svc, _fake) = fake_service();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            oci_cache_http::serve_with(listener, svc, None, options, std::future::pending()),
        )
        .await
        .expect("refused at once, not served");
        let e = served.unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let server = Server::start(oci_cache_http::ServerOptions {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(ping_v2(&mut first).await.starts_with("HTTP/1.1 200"));
    // The kernel accepts the second connection, the server does not serve it.
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    send_v2(&mut second).await;
    let waiting = tokio::time::timeout(Duration::from_millis(700), read_answer(&mut second)).await;
    assert!(
        waiting.is_err(),
        "a second connection was served past max_connections = 1"
    );
    // Once the first one closes, the waiting one is served.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut second))
        .await
        .expect("served once the first connection closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let server = Server::start(oci_cache_http::ServerOptions {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/v2/", server.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // Open before the idle timeout, closed by the server after it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!connection.is_finished());
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the server closed the idle HTTP/2 connection")
        .unwrap()
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(oci_cache_http::ServerOptions {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(ping_v2(&mut stream).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server closed the idle HTTP/1.1 connection");
    assert_eq!(read.unwrap(), 0);
    server.stop().await;
}

// ------------------------------------------------------------------ upstream connection pool

/// An HTTP/1.1 origin answering every request with an empty tag list after
/// `delay`, counting the connections open right now.
async fn counting_origin(
    delay: Duration,
) -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = open.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"name":"library/alpine","tags":[]}"#,
                        )),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, open, task)
}

#[tokio::test]
async fn idle_upstream_connections_are_capped_per_host() {
    use std::sync::atomic::Ordering;
    let (url, open, origin) = counting_origin(Duration::from_millis(300)).await;
    let up =
        HyperUpstream::new(Arc::new(mirrors(&url)), options().with_max_idle_per_host(1)).unwrap();
    let (r, a) = (registry("docker.io"), repo("library/alpine"));
    let lists = futures::future::join_all((0..4).map(|_| up.tag_list(&r, &a, None, None))).await;
    for list in lists {
        list.unwrap();
    }
    // The three connections beyond the cap are closed once idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open.load(Ordering::SeqCst), 1);
    origin.abort();
}
