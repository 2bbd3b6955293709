//! The peer route between replicas of a fleet and the client that uses it:
//! the shared secret, never upstream, in-flight fills, and a client that
//! sends the secret to the advertised replica only.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use oci_cache_core::digest::Digest;
use oci_cache_core::fleet::PeerFills;
use oci_cache_core::storage::ByteStream;
use oci_cache_core::UpstreamErrorKind;
use oci_cache_http::fleet::{HyperPeerFills, PeerOptions, PeerSecret};
use oci_cache_http::OciService;
use tokio::sync::Semaphore;

use crate::support::*;

const SECRET: &str = "peer-secret-0123456789abcdef";

fn secret() -> PeerSecret {
    PeerSecret::new(SECRET).unwrap()
}

fn peer_service() -> (OciService, Arc<FakeUpstream>) {
    let (svc, fake) = fake_service();
    (svc.with_peer_secret(secret()), fake)
}

fn peer_path(digest: &Digest) -> String {
    format!("/_oci-cache/peer/blobs/{digest}")
}

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn collect(mut stream: ByteStream) -> oci_cache_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Serves `svc` on a loopback address; the URL and a guard that stops it.
async fn serve_on(ip: &str, svc: OciService) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(oci_cache_http::serve(listener, svc, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

fn client(secret_text: &str) -> HyperPeerFills {
    HyperPeerFills::new(
        PeerSecret::new(secret_text).unwrap(),
        PeerOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn without_a_secret_the_peer_route_does_not_exist() {
    let (svc, fake) = fake_service();
    let digest = fake.add_blob(BlobScript::new(&data(1000)));
    let answer = call(
        &svc,
        Method::GET,
        &peer_path(&digest),
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(fake.calls().total(), 0);
}

#[tokio::test]
async fn a_missing_or_wrong_secret_is_401_and_asks_nothing() {
    let (svc, fake) = peer_service();
    let digest = fake.add_blob(BlobScript::new(&data(1000)));
    let wrong = format!("Bearer {SECRET}x");
    let basic = format!("Basic {SECRET}");
    for headers in [
        vec![],
        vec![("authorization", wrong.as_str())],
        vec![("authorization", basic.as_str())],
        vec![("authorization", SECRET)],
    ] {
        let answer = call(&svc, Method::GET, &peer_path(&digest), &headers).await;
        assert_eq!(answer.status, 401, "{headers:?}");
        assert_eq!(answer.error_code(), "UNAUTHORIZED");
        assert!(answer.header("www-authenticate").is_some());
    }
    assert_eq!(fake.calls().total(), 0);
}

#[tokio::test]
async fn the_peer_route_never_fetches_upstream_and_serves_what_is_stored() {
    let (svc, fake) = peer_service();
    let bytes = data(50_000);
    let digest = fake.add_blob(BlobScript::new(&bytes));
    let auth = bearer();
    let headers = [("authorization", auth.as_str())];

    let cold = call(&svc, Method::GET, &peer_path(&digest), &headers).await;
    assert_eq!(cold.status, 404);
    assert_eq!(cold.error_code(), "BLOB_UNKNOWN");
    assert_eq!(
        fake.calls().total(),
        0,
        "a peer request must never go upstream"
    );

    // A client of this replica fills it; then the peer gets the stored copy.
    let pulled = get(&svc, &format!("/v2/library/alpine/blobs/{digest}")).await;
    assert_eq!(pulled.body, bytes);
    let mut stored = call(&svc, Method::GET, &peer_path(&digest), &headers).await;
    for _ in 0..100 {
        if stored.status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stored = call(&svc, Method::GET, &peer_path(&digest), &headers).await;
    }
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, bytes);
    assert_eq!(
        stored.header("docker-content-digest"),
        Some(digest.as_str())
    );
    let ranged = [("authorization", auth.as_str()), ("range", "bytes=40000-")];
    let tail = call(&svc, Method::GET, &peer_path(&digest), &ranged).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, bytes[40_000..]);

    let bad = call(
        &svc,
        Method::GET,
        "/_oci-cache/peer/blobs/sha256:nothex",
        &headers,
    )
    .await;
    assert_eq!(bad.status, 400);
    let head = call(&svc, Method::DELETE, &peer_path(&digest), &headers).await;
    assert_eq!(head.status, 405);
    assert_eq!(fake.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_the_fill_under_way_on_the_holder() {
    let (svc, fake) = peer_service();
    let bytes = data(3 * 1024 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let digest = fake.add_blob(BlobScript::new(&bytes).chunk(64 * 1024).gated(&gate));
    let (url, _stop) = serve_on("127.0.0.1", svc.clone()).await;

    // A client of the holder starts the fill, which then stalls upstream.
    let holder_client = {
        let svc = svc.clone();
        let path = format!("/v2/library/alpine/blobs/{digest}");
        tokio::spawn(async move { get(&svc, &path).await })
    };
    gate.add_permits(10);
    while svc.engine().blob_fills_in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let fetched = client(SECRET).fetch(&url, &digest).await.unwrap();
    assert_eq!(fetched.size, Some(bytes.len() as u64));
    let relayed = tokio::spawn(collect(fetched.stream));
    gate.add_permits(usize::MAX >> 4);
    assert_eq!(relayed.await.unwrap().unwrap(), bytes);
    assert_eq!(holder_client.await.unwrap().body, bytes);
    assert_eq!(
        fake.calls().blob_get(),
        1,
        "one upstream fetch for both replicas"
    );
}

#[tokio::test]
async fn the_client_reports_not_here_and_a_refused_secret_distinctly() {
    let (svc, fake) = peer_service();
    let digest = fake.add_blob(BlobScript::new(&data(1000)));
    let (url, _stop) = serve_on("127.0.0.1", svc).await;

    let missing = client(SECRET).fetch(&url, &digest).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let refused = client("another-secret-0123456789")
        .fetch(&url, &digest)
        .await
        .unwrap_err();
    match &refused {
        oci_cache_core::Error::Upstream(e) => assert_eq!(e.kind(), UpstreamErrorKind::Unauthorized),
        other => panic!("{other}"),
    }
    assert!(
        refused.to_string().contains("--peer-secret-file"),
        "{refused}"
    );
    assert_eq!(fake.calls().total(), 0);
}

#[tokio::test]
async fn the_client_sends_the_secret_to_the_advertised_replica_only() {
    // A "replica" that redirects elsewhere: the client must not follow.
    let elsewhere = MockRegistry::start_on("127.0.0.2").await;
    let holder = MockRegistry::start().await;
    holder.push(Reply::status(307).header("location", &format!("{}/steal", elsewhere.url())));
    let digest = Digest::sha256_of(b"x");
    let error = client(SECRET)
        .fetch(&holder.url(), &digest)
        .await
        .unwrap_err();
    assert!(!error.is_not_found(), "{error}");
    assert_eq!(elsewhere.count(), 0, "a redirect was followed");
    let seen = holder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some(bearer().as_str()));

    // URLs that are not a bare replica origin are refused before dialling.
    for url in [
        format!("{}/v2/", elsewhere.url()),
        format!("{}?x=1", elsewhere.url()),
        elsewhere.url().replace("http://", "http://user:pw@"),
        elsewhere.url().replace("http://", "ftp://"),
    ] {
        assert!(client(SECRET).fetch(&url, &digest).await.is_err(), "{url}");
    }
    assert_eq!(elsewhere.count(), 0);
}

#[tokio::test]
async fn the_client_refuses_a_blob_over_the_cap_before_reading_it() {
    let holder = MockRegistry::start().await;
    let digest = Digest::sha256_of(b"x");
    holder.push(Reply::ok(Bytes::from_static(b"0123456789")));
    let small = PeerOptions::default().with_max_blob_size(4);
    let capped = HyperPeerFills::new(secret(), small).unwrap();
    let error = capped.fetch(&holder.url(), &digest).await.unwrap_err();
    assert!(error.to_string().contains("4"), "{error}");
    assert!(
        matches!(error, oci_cache_core::Error::TooLarge { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_replica_that_does_not_answer_costs_at_most_the_answer_timeout() {
    let holder = MockRegistry::start().await;
    holder.push(Reply::Delay(
        std::time::Duration::from_secs(5),
        Box::new(Reply::ok(Bytes::from_static(b"late"))),
    ));
    // The answer (status and headers) is bounded on its own since a stopped
    // holder accepts connections and never answers.
    let quick = PeerOptions::default().with_answer_timeout(std::time::Duration::from_millis(200));
    let client = HyperPeerFills::new(secret(), quick).unwrap();
    let started = std::time::Instant::now();
    let error = client
        .fetch(&holder.url(), &Digest::sha256_of(b"x"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    match &error {
        oci_cache_core::Error::Upstream(e) => assert_eq!(e.kind(), UpstreamErrorKind::Timeout),
        other => panic!("{other}"),
    }
    // Nothing listens here: unreachable, not a hang.
    let closed = format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let error = client
        .fetch(&closed, &Digest::sha256_of(b"x"))
        .await
        .unwrap_err();
    match &error {
        oci_cache_core::Error::Upstream(e) => assert_eq!(e.kind(), UpstreamErrorKind::Unavailable),
        other => panic!("{other}"),
    }
}

/// With client authentication on, replicas (which send no user) still get
/// the peer route with the secret, and nothing without it.
#[tokio::test]
async fn client_authentication_leaves_the_peer_route_to_the_fleet_secret() {
    let (svc, fake) = peer_service();
    let bytes = data(20_000);
    let digest = fake.add_blob(BlobScript::new(&bytes));
    let dir = tempfile::tempdir().unwrap();
    let config = mirrors("http://127.0.0.1:9");
    let pipeline = behind_auth(svc.clone(), &config, dir.path(), "dev", &[]);
    let call = |authorization: Option<String>, path: String| {
        let pipeline = pipeline.clone();
        async move {
            let mut request = http::Request::get(path);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = pipeline
                .handle(request.body(http_body_util::Empty::<Bytes>::new()).unwrap())
                .await;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, body)
        }
    };
    // Filled through the service itself (the test's own client).
    assert_eq!(
        get(&svc, &format!("/v2/library/alpine/blobs/{digest}"))
            .await
            .body,
        bytes
    );
    let mut served = call(Some(bearer()), peer_path(&digest)).await;
    for _ in 0..100 {
        if served.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        served = call(Some(bearer()), peer_path(&digest)).await;
    }
    assert_eq!(served, (http::StatusCode::OK, Bytes::from(bytes)));
    let refused = call(None, peer_path(&digest)).await;
    assert_eq!(refused.0, 401);
    // The registry API still needs a user.
    let api = call(Some(bearer()), format!("/v2/library/alpine/blobs/{digest}")).await;
    assert_eq!(api.0, 401);
}
