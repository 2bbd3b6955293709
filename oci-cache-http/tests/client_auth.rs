//! Client authentication on a real socket and the defaults of issue 22.

use std::sync::Arc;
use std::time::Duration;

use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::Mirror;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

const DEV: &str = "Basic ZGV2OnB3"; // dev:pw

/// A mirror hosting `local/…` behind client authentication (user `dev:pw`)
/// served on 127.0.0.1; stopped when dropped.
struct Served {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = mirrors("http://127.0.0.1:9");
        let inner = Mirror::builder()
            .upstreams(config.clone())
            .storage(Arc::new(MemoryStorage::new()))
            .upstream(Arc::new(FakeUpstream::new()))
            .local_prefixes(["local"])
            .build()
            .unwrap()
            .service();
        let svc = behind_auth(inner, &config, dir.path(), "dev", &[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(oci_cache_http::serve(listener, svc, async move {
            let _ = stopped.await;
        }));
        Served {
            addr,
            stop: Some(stop),
            _dir: dir,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An image index that needs nothing else pushed, about as large as the
/// conformance suite's manifests.
fn manifest() -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"annotations":{{"pad":"{}"}}}}"#,
        "x".repeat(600)
    )
    .into_bytes()
}

/// The head of a request with a body, as Go's `net/http` writes it (the body
/// follows in a second write).
fn head(method: &str, path: &str, length: usize, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nhost: mirror\r\ncontent-type: {OCI_INDEX}\r\n\
         {authorization}content-length: {length}\r\n\r\n"
    )
}

/// Issue 22: a push refused with 401 before its body was read leaves the
/// connection usable, so the client's retry with credentials on the same
/// connection succeeds (the body arriving at once, or after a pause).
#[tokio::test]
async fn a_retry_after_a_401_works_on_the_same_connection() {
    let served = Served::start().await;
    let body = manifest();
    for pause in [0, 20, 100] {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        let path = format!("/v2/local/probe/manifests/t{pause}");
        stream
            .write_all(head("PUT", &path, body.len(), None).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(pause)).await;
        stream.write_all(&body).await.unwrap();
        let refused = read_answer(&mut stream).await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

        stream
            .write_all(head("PUT", &path, body.len(), Some(DEV)).as_bytes())
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
            .await
            .expect("an answer on the same connection");
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "pause {pause} ms: {answer}"
        );
    }
}

/// A body too large to read for a refusal is not waited for: the answer
/// says `Connection: close`, so the client knows to open a new connection.
#[tokio::test]
async fn a_401_to_a_large_body_says_connection_close() {
    let served = Served::start().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let path = "/v2/local/probe/blobs/uploads/?digest=sha256:00";
    stream
        .write_all(head("POST", path, 64 * 1024 * 1024, None).as_bytes())
        .await
        .unwrap();
    stream.write_all(&[0u8; 4096]).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
        .await
        .expect("answered without the body");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{refused}"
    );
}

mod defaults {
    use bytes::Bytes;
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use oci_cache_core::digest::Digest;
    use oci_cache_core::testing::BlobScript;
    use oci_cache_http::Pipeline;

    use super::*;

    /// A mirror hosting `local/…` in front of a fake upstream, behind client
    /// authentication with `public` made public.
    fn guarded(public: &[&str]) -> (Pipeline, Arc<FakeUpstream>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = mirrors("http://127.0.0.1:9");
        let fake = Arc::new(FakeUpstream::new());
        let inner = Mirror::builder()
            .upstreams(config.clone())
            .storage(Arc::new(MemoryStorage::new()))
            .upstream(fake.clone())
            .local_prefixes(["local"])
            .build()
            .unwrap()
            .service();
        let svc = behind_auth(inner, &config, dir.path(), "dev", public);
        (svc, fake, dir)
    }

    async fn send(
        svc: &Pipeline,
        method: Method,
        uri: &str,
        authorization: Option<&str>,
        body: &'static [u8],
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let request = request.body(Full::new(Bytes::from_static(body))).unwrap();
        let (parts, body) = svc.handle(request).await.into_parts();
        (parts.status, body.collect().await.unwrap().to_bytes())
    }

    /// Issue 22: with client authentication on, an upstream without
    /// credentials (docker.io here) and the hosted repositories are not open
    /// to anonymous clients unless marked public; nothing goes upstream for
    /// a refused request.
    #[tokio::test]
    async fn every_upstream_and_hosted_repository_needs_credentials_by_default() {
        let (svc, fake, _dir) = guarded(&[]);
        let layer = fake.add_blob(BlobScript::new(b"upstream layer"));
        for path in [
            format!("/v2/library/alpine/blobs/{layer}"),
            format!("/v2/docker.io/library/alpine/blobs/{layer}"),
            format!("/v2/ghcr.io/org/app/blobs/{layer}"),
            "/v2/library/alpine/manifests/3.20".to_owned(),
            "/v2/local/app/tags/list".to_owned(),
            format!("/v2/local/app/blobs/{layer}"),
        ] {
            let (status, _) = send(&svc, Method::GET, &path, None, b"").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
        assert_eq!(fake.calls().total(), 0, "a refused request went upstream");
        let (status, body) = send(
            &svc,
            Method::GET,
            &format!("/v2/library/alpine/blobs/{layer}"),
            Some(DEV),
            b"",
        )
        .await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, &b"upstream layer"[..])
        );
    }

    /// Made public, an upstream and a local prefix serve anonymous pulls;
    /// a blob pushed to a protected prefix does not leak through a public
    /// upstream's path by its digest.
    #[tokio::test]
    async fn public_names_are_anonymous_and_protected_pushes_stay_private() {
        let (svc, fake, _dir) = guarded(&["docker.io"]);
        let layer = fake.add_blob(BlobScript::new(b"upstream layer"));
        let (status, _) = send(
            &svc,
            Method::GET,
            &format!("/v2/library/alpine/blobs/{layer}"),
            None,
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        let secret: &'static [u8] = b"pushed to a protected prefix";
        let digest = Digest::sha256_of(secret);
        let upload = format!("/v2/local/app/blobs/uploads/?digest={digest}");
        let (status, _) = send(&svc, Method::POST, &upload, Some(DEV), secret).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = send(
            &svc,
            Method::GET,
            &format!("/v2/library/alpine/blobs/{digest}"),
            None,
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the pushed blob leaked");
        let (status, _) = send(
            &svc,
            Method::GET,
            &format!("/v2/local/app/blobs/{digest}"),
            None,
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (public_hosted, _, _dir) = guarded(&["local"]);
        let (status, _) = send(&public_hosted, Method::POST, &upload, Some(DEV), secret).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = send(
            &public_hosted,
            Method::GET,
            &format!("/v2/local/app/blobs/{digest}"),
            None,
            b"",
        )
        .await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, secret));
    }
}
