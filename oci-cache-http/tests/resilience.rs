//! Failure policy of HyperUpstream: circuit breaker, Retry-After, offline,
//! stalled and short bodies, per-endpoint TLS settings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::{EndpointTls, MirrorConfig};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::upstream::{BlobRange, Upstream};
use oci_cache_core::{Error, UpstreamErrorKind};
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

fn options() -> UpstreamOptions {
    UpstreamOptions::default()
        .with_proxy(ProxyConfig::Direct)
        .with_request_timeout(Duration::from_millis(300))
        .with_read_timeout(Duration::from_millis(300))
        .with_breaker_threshold(3)
        .with_breaker_cooldown(Duration::from_secs(60))
}

fn client_with(mirrors: MirrorConfig, options: UpstreamOptions) -> HyperUpstream {
    HyperUpstream::new(Arc::new(mirrors), options).unwrap()
}

fn kind_of(err: &Error) -> UpstreamErrorKind {
    match err {
        Error::Upstream(e) => e.kind(),
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

fn manifest_reply() -> Reply {
    Reply::ok(M).header("content-type", OCI_MANIFEST)
}

/// A server that accepts connections and never answers: a hung upstream,
/// the expensive kind of dead. Counts connections.
async fn black_hole() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted, task)
}

#[tokio::test]
async fn breaker_skips_a_hung_mirror_after_three_timeouts() {
    let origin = MockRegistry::start().await;
    let (hole, accepted, task) = black_hole().await;
    let mut config = mirrors(&origin.url());
    config.upstreams[0].endpoints = vec![endpoint(&hole)];
    let up = client_with(config, options());
    for _ in 0..13 {
        origin.push(manifest_reply());
    }

    let mut closed = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        get_alpine_manifest(&up).await.unwrap();
        closed.push(start.elapsed());
    }
    let mut open = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        get_alpine_manifest(&up).await.unwrap();
        open.push(start.elapsed());
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    // The measured figures (the report quotes them): `-- --nocapture`.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "hung mirror: mean cost per request {:?} with the breaker closed, {:?} with it open",
            mean(&closed),
            mean(&open)
        );
    }
    assert!(
        closed.iter().all(|d| *d >= Duration::from_millis(300)),
        "{closed:?}"
    );
    // Open, no request waits for the hung mirror's 300 ms timeout (a bound
    // far from both figures, so a loaded machine does not fail it).
    assert!(
        open.iter().all(|d| *d < Duration::from_millis(250)),
        "{open:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "an open breaker dials nothing"
    );
    assert_eq!(origin.count(), 13);
    task.abort();
}

#[tokio::test]
async fn a_dead_only_endpoint_fails_fast_with_retry_after_once_open() {
    let (hole, accepted, task) = black_hole().await;
    let up = client_with(mirrors(&hole), options());
    for _ in 0..3 {
        let err = get_alpine_manifest(&up).await.unwrap_err();
        assert_eq!(kind_of(&err), UpstreamErrorKind::Timeout);
    }
    let start = Instant::now();
    let err = get_alpine_manifest(&up).await.unwrap_err();
    // Open, it does not wait out the 300 ms timeout again (a bound far
    // below it, yet far above a loaded machine's scheduling delays).
    assert!(start.elapsed() < Duration::from_millis(250));
    assert_eq!(kind_of(&err), UpstreamErrorKind::Skipped);
    let Error::Upstream(e) = &err else {
        unreachable!()
    };
    assert!(e
        .retry_after()
        .is_some_and(|d| d >= Duration::from_secs(59)));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    task.abort();
}

#[tokio::test]
async fn breaker_half_opens_after_the_cooldown_and_closes_on_an_answer() {
    let origin = MockRegistry::start().await;
    let up = client_with(
        mirrors(&origin.url()),
        options().with_breaker_cooldown(Duration::from_millis(200)),
    );
    for _ in 0..3 {
        origin.push(Reply::status(503));
    }
    for _ in 0..3 {
        assert_eq!(
            kind_of(&get_alpine_manifest(&up).await.unwrap_err()),
            UpstreamErrorKind::Unavailable
        );
    }
    assert_eq!(
        kind_of(&get_alpine_manifest(&up).await.unwrap_err()),
        UpstreamErrorKind::Skipped
    );
    assert_eq!(origin.count(), 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    origin.push(manifest_reply()).push(manifest_reply());
    get_alpine_manifest(&up).await.unwrap();
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(origin.count(), 5);
}

/// A segmented fill's extra connection that a mirror refuses: the error
/// comes back at once (the fill reads that part itself), the origin is not
/// asked instead, and the mirror is neither skipped by its breaker nor
/// paused for its Retry-After (a 429 on any other request does both).
#[tokio::test]
async fn a_refused_extra_connection_neither_trips_the_breaker_nor_pauses_the_host() {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let config = mirror_then_origin(&mirror.url(), &origin.url());
    let up = client_with(config, options());
    let digest = Digest::sha256_of(b"some layer");
    let extra = BlobRange::from_offset(1 << 20)
        .with_end(Some(2 << 20))
        .with_extra(true);
    for refusal in [
        Reply::status(429),
        Reply::status(429).header("retry-after", "30"),
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
    ] {
        mirror.push(refusal);
        let err = up
            .blob_get_range(
                &registry("docker.io"),
                &repo("library/alpine"),
                &digest,
                &extra,
            )
            .await
            .expect_err("a refused extra connection is an error");
        assert!(
            matches!(
                kind_of(&err),
                UpstreamErrorKind::TooManyRequests | UpstreamErrorKind::Unavailable
            ),
            "{err}"
        );
        mirror.push(manifest_reply());
        get_alpine_manifest(&up).await.unwrap();
    }
    assert_eq!(mirror.count(), 10, "the mirror answered every manifest");
    assert_eq!(origin.count(), 0, "nothing moved on to the origin");
}

#[tokio::test]
async fn retry_after_429_moves_on_and_skips_the_endpoint_until_then() {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let config = mirror_then_origin(&mirror.url(), &origin.url());
    let up = client_with(config, options());
    mirror.push(Reply::status(429).header("retry-after", "1"));
    origin.push(manifest_reply()).push(manifest_reply());
    get_alpine_manifest(&up).await.unwrap();
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(mirror.count(), 1, "the throttled mirror was asked again");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mirror.push(manifest_reply());
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(mirror.count(), 2);
    assert_eq!(origin.count(), 2);

    // The only endpoint throttles: the client gets 429 with Retry-After at once.
    let lone = MockRegistry::start().await;
    let up = client_with(mirrors(&lone.url()), options());
    lone.push(Reply::status(429).header("retry-after", "30"));
    let err = get_alpine_manifest(&up).await.unwrap_err();
    assert_eq!(kind_of(&err), UpstreamErrorKind::TooManyRequests);
    let start = Instant::now();
    let err = get_alpine_manifest(&up).await.unwrap_err();
    // At once: not after the 30 s the endpoint asked for.
    assert!(start.elapsed() < Duration::from_secs(5));
    let Error::Upstream(e) = &err else {
        unreachable!()
    };
    // The host is paused: the client is told 429, not "skipped".
    assert_eq!(e.kind(), UpstreamErrorKind::TooManyRequests);
    assert!(e
        .retry_after()
        .is_some_and(|d| d <= Duration::from_secs(30) && d > Duration::from_secs(28)));
    assert_eq!(lone.count(), 1);
}

#[tokio::test]
async fn offline_never_dials() {
    let origin = MockRegistry::start().await;
    let up = client_with(mirrors(&origin.url()), options().with_offline(true));
    let err = get_alpine_manifest(&up).await.unwrap_err();
    assert_eq!(kind_of(&err), UpstreamErrorKind::Offline);
    let err = up
        .blob_get(
            &registry("docker.io"),
            &repo("library/alpine"),
            &Digest::sha256_of(b"x"),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(kind_of(&err), UpstreamErrorKind::Offline);
    assert_eq!(origin.count(), 0);
}

/// A raw server answering every request with `head` and `body`, then
/// `then`: close the connection, or hold it open (a stall).
async fn raw_server(
    head: String,
    body: Vec<u8>,
    hold: bool,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            if hold {
                held.push(stream);
            }
        }
    });
    (url, task)
}

async fn read_blob(up: &HyperUpstream, digest: &Digest) -> Result<Vec<u8>, Error> {
    let fetched = up
        .blob_get(&registry("docker.io"), &repo("library/alpine"), digest)
        .await?;
    let mut stream = fetched.stream;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_stalled_blob_times_out_and_a_short_body_is_an_error() {
    let digest = Digest::sha256_of(&[7u8; 1000]);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\n\r\n"
            .to_owned();
    let (stall_url, stall) = raw_server(head.clone(), vec![7u8; 400], true).await;
    let up = client_with(mirrors(&stall_url), options());
    let start = Instant::now();
    let err = read_blob(&up, &digest).await.unwrap_err();
    assert_eq!(kind_of(&err), UpstreamErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(2));
    stall.abort();

    // Content-Length says 1000, the connection closes after 400.
    let (short_url, short) = raw_server(head, vec![7u8; 400], false).await;
    let up = client_with(mirrors(&short_url), options());
    let err = read_blob(&up, &digest).await.unwrap_err();
    assert_eq!(kind_of(&err), UpstreamErrorKind::Unavailable);
    short.abort();
}

#[tokio::test]
async fn a_first_byte_that_never_comes_times_out() {
    let (hole, _accepted, task) = black_hole().await;
    let up = client_with(mirrors(&hole), options());
    let start = Instant::now();
    let err = read_blob(&up, &Digest::sha256_of(b"x")).await.unwrap_err();
    assert_eq!(kind_of(&err), UpstreamErrorKind::Timeout);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    task.abort();
}

#[tokio::test]
async fn tls_settings_are_checked_when_the_client_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a pem file\n").unwrap();
    for (tls, want) in [
        (
            EndpointTls {
                ca_file: Some(missing.clone()),
                ..EndpointTls::default()
            },
            "tls.ca_file",
        ),
        (
            EndpointTls {
                ca_file: Some(empty.clone()),
                ..EndpointTls::default()
            },
            "no usable CA certificate",
        ),
        (
            EndpointTls {
                client_cert: Some(empty.clone()),
                ..EndpointTls::default()
            },
            "must be set together",
        ),
    ] {
        let mut config = mirrors("https://registry.example");
        config.upstreams[0].origin.tls = tls;
        let err = HyperUpstream::new(Arc::new(config), options())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(err.contains("https://registry.example"), "{err}");
    }
    let mut config = mirrors("https://registry.example");
    config.upstreams[0].origin.tls = EndpointTls {
        insecure_skip_verify: true,
        ..EndpointTls::default()
    };
    HyperUpstream::new(Arc::new(config), options()).unwrap();
}

#[tokio::test]
async fn a_manifest_with_the_wrong_digest_moves_on_to_the_next_endpoint() {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let config = mirror_then_origin(&mirror.url(), &origin.url());
    let up = client_with(config, options());
    let digest = Digest::sha256_of(M);
    mirror.push(
        Reply::ok(&br#"{"schemaVersion":2,"lie":1}"#[..]).header("content-type", OCI_MANIFEST),
    );
    origin.push(manifest_reply());
    let got = up
        .manifest_get(
            &registry("docker.io"),
            &repo("library/alpine"),
            &ManifestRef::Digest(digest.clone()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(&got.bytes[..], M);
    assert_eq!((mirror.count(), origin.count()), (1, 1));
}

#[tokio::test]
async fn debug_output_never_shows_credentials() {
    let mut config = mirrors("https://registry.example");
    config.upstreams[0].origin = config.upstreams[0]
        .origin
        .clone()
        .with_credentials("me", "hunter2-secret");
    let up = client_with(config, options());
    let debug = format!("{up:?}");
    assert!(!debug.contains("hunter2-secret"), "{debug}");
}

#[tokio::test]
async fn a_connect_that_never_completes_gives_up_after_the_connect_timeout() {
    // A listener that never accepts, with its accept queue filled: further
    // SYNs are dropped, so a connect neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let up = client_with(
        mirrors(&format!("http://{addr}")),
        options()
            .with_connect_timeout(Duration::from_millis(200))
            .with_request_timeout(Duration::from_secs(10)),
    );
    let start = Instant::now();
    let err = get_alpine_manifest(&up).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            kind_of(&err),
            UpstreamErrorKind::Unavailable | UpstreamErrorKind::Timeout
        ),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    drop(listener);
}

/// A refused connection reads as such in the error chain the logs print,
/// not only as hyper's `client error (Connect)`.
#[tokio::test]
async fn a_refused_connection_keeps_its_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let up = client_with(mirrors(&url), options());
    let err = get_alpine_manifest(&up).await.unwrap_err();
    let chain = oci_cache_core::ErrorChain(&err).to_string();
    assert!(chain.contains("client error (Connect)"), "{chain}");
    assert!(chain.to_lowercase().contains("refused"), "{chain}");
}

/// The `Range` and `If-Range` of one request a [`cutting_link`] served.
type RangeAsked = (Option<String>, Option<String>);

/// A registry behind a link that drops every connection after `cut` body
/// bytes, serving `blob` with `ETag: "v1"`; with `ranges` it answers
/// `Range: bytes=N-` with a `206`, else always the whole blob. Records what
/// each request asked for.
async fn cutting_link(
    blob: Vec<u8>,
    cut: usize,
    ranges: bool,
) -> (
    String,
    Arc<std::sync::Mutex<Vec<RangeAsked>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(|v| v.trim().to_owned())
            };
            let (range, if_range) = (header("range"), header("if-range"));
            seen.lock().unwrap().push((range.clone(), if_range));
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .filter(|_| ranges)
                .unwrap_or(0);
            let len = blob.len();
            let status = if start > 0 {
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}",
                    len - 1
                )
            } else {
                "200 OK".to_owned()
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\
                 Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                len - start
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.write_all(&blob[start..(start + cut).min(len)]).await;
            // Dropped: the link goes down after `cut` bytes.
        }
    });
    (url, asked, task)
}

#[tokio::test]
async fn a_link_that_drops_every_connection_delivers_the_blob_through_ranged_resumes() {
    let blob: Vec<u8> = (0..350_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    let (url, asked, task) = cutting_link(blob.clone(), 100_000, true).await;
    let up = client_with(mirrors(&url), options());
    let svc = service_with(Arc::new(up), mirrors(&url));
    let answer = get(&svc, &format!("/v2/library/alpine/blobs/{digest}")).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body == blob, "the client got other bytes");
    let asked = asked.lock().unwrap().clone();
    let ranges: Vec<Option<&str>> = asked.iter().map(|(r, _)| r.as_deref()).collect();
    assert_eq!(
        ranges,
        [
            // The probe of a segmented fill: this upstream ignores it.
            Some("bytes=0-16777215"),
            Some("bytes=100000-"),
            Some("bytes=200000-"),
            Some("bytes=300000-")
        ]
    );
    assert!(
        asked[1..]
            .iter()
            .all(|(_, if_range)| if_range.as_deref() == Some("\"v1\"")),
        "{asked:?}"
    );
    // Stored: the next request is a hit, without the link.
    task.abort();
    let again = get(&svc, &format!("/v2/library/alpine/blobs/{digest}")).await;
    assert!(again.status == 200 && again.body == blob);
}

#[tokio::test]
async fn an_upstream_without_ranges_is_read_again_from_byte_zero() {
    let blob: Vec<u8> = (0..250_000u32).map(|i| (i * 11 % 251) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    // Every answer is the whole blob, and only the first is cut.
    let (url, asked, task) = cutting_link(blob.clone(), 100_000, false).await;
    let up = client_with(mirrors(&url), options());
    let fetched = up
        .blob_get_range(
            &registry("docker.io"),
            &repo("library/alpine"),
            &digest,
            &BlobRange::from_offset(100_000).with_if_range(Some("\"v1\"".into())),
        )
        .await
        .unwrap();
    assert_eq!((fetched.start, fetched.total), (0, Some(250_000)));
    assert_eq!(fetched.etag.as_deref(), Some("\"v1\""));
    assert_eq!(fetched.endpoint.as_deref(), Some(url.as_str()));
    assert_eq!(
        asked.lock().unwrap()[0],
        (Some("bytes=100000-".into()), Some("\"v1\"".into()))
    );
    task.abort();
}
