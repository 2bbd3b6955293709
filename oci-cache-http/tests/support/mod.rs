//! Test support: a scripted mock registry on 127.0.0.1:0, the shared in-memory
//! fake upstream (`oci_cache_core::testing::FakeUpstream`), and helpers to
//! call the service.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oci_cache_core::mirror::{Endpoint, MirrorConfig, UpstreamConfig};
use oci_cache_core::reference::{ManifestRef, Registry, Repository};
use oci_cache_core::storage::{MemoryStorage, Storage};
pub use oci_cache_core::testing::{BlobScript, FakeUpstream};
use oci_cache_core::upstream::{FetchedManifest, Upstream};
use oci_cache_core::Error;
use oci_cache_http::{Mirror, OciService};
use tokio::sync::oneshot;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub mod limited;

// ---------------------------------------------------------------- mock registry

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Close the connection without answering.
    Drop,
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Respond {
            status,
            headers: vec![],
            body: Bytes::new(),
        }
    }
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Reply::status(200).body(body)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
    pub fn body(mut self, bytes: impl Into<Bytes>) -> Self {
        if let Reply::Respond { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }
}

/// A request the mock saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct MockState {
    queue: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A registry that answers from a queue and records every request.
/// Unscripted requests get 599 so a test sees them.
pub struct MockRegistry {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: Option<oneshot::Sender<()>>,
}

impl MockRegistry {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// A mock on another loopback address (`127.0.0.2`: "another host").
    pub async fn start_on(ip: &str) -> Self {
        let state = Arc::new(MockState::default());
        let shared = state.clone();
        let (addr, stop) = serve_http(ip, move |req| {
            let state = shared.clone();
            async move { answer(&state, req).await }
        })
        .await;
        MockRegistry {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn push(&self, reply: Reply) -> &Self {
        self.state.queue.lock().unwrap().push_back(reply);
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn remaining(&self) -> usize {
        self.state.queue.lock().unwrap().len()
    }
}

impl Drop for MockRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves HTTP/1 on `ip`, port 0, answering each request with `handle`,
/// until the returned sender is dropped or sent to.
pub async fn serve_http<F, Fut>(ip: &str, handle: F) -> (SocketAddr, oneshot::Sender<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, std::io::Error>>
        + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = &mut stopped => break,
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, stop)
}

async fn answer(
    state: &MockState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    state.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    });
    let mut reply = state
        .queue
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::status(599));
    loop {
        match reply {
            Reply::Delay(d, next) => {
                tokio::time::sleep(d).await;
                reply = *next;
            }
            // A service error makes hyper close the connection without a response.
            Reply::Drop => return Err(std::io::Error::other("scripted drop")),
            Reply::Respond {
                status,
                headers,
                body,
            } => {
                let mut response = Response::new(Full::new(body));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    response.headers_mut().append(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                return Ok(response);
            }
        }
    }
}

// ---------------------------------------------------------------- configuration

pub fn endpoint(url: &str) -> Endpoint {
    Endpoint::new(url)
}

pub fn upstream(
    name: &str,
    aliases: &[&str],
    origin: Endpoint,
    mirrors: Vec<Endpoint>,
) -> UpstreamConfig {
    UpstreamConfig {
        name: Registry::new(name).unwrap(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        endpoints: mirrors,
        origin,
        skip_fallback: false,
    }
}

/// docker.io (with Hub aliases) and ghcr.io, both pointing at `origin`.
/// [`mirrors`] with `mirror` in docker.io's chain before `origin`.
pub fn mirror_then_origin(mirror: &str, origin: &str) -> MirrorConfig {
    let mut config = mirrors(origin);
    config.upstreams[0].endpoints = vec![endpoint(mirror)];
    config
}

pub fn mirrors(origin: &str) -> MirrorConfig {
    MirrorConfig {
        upstreams: vec![
            upstream(
                "docker.io",
                &["index.docker.io", "registry-1.docker.io"],
                endpoint(origin),
                vec![],
            ),
            upstream("ghcr.io", &[], endpoint(origin), vec![]),
        ],
        default_upstream: Registry::new("docker.io").unwrap(),
    }
}

pub fn registry(name: &str) -> Registry {
    Registry::new(name).unwrap()
}

pub fn repo(name: &str) -> Repository {
    Repository::new(name).unwrap()
}

/// GET the manifest of `docker.io/library/alpine:3` through `up`: the request
/// most upstream-client tests make.
pub async fn get_alpine_manifest(
    up: &oci_cache_http::HyperUpstream,
) -> Result<FetchedManifest, Error> {
    up.manifest_get(
        &registry("docker.io"),
        &repo("library/alpine"),
        &ManifestRef::Tag("3".parse().unwrap()),
        &[],
    )
    .await
}

// ---------------------------------------------------------------- service helpers

/// A service over memory storage and `upstream`, routing with `mirrors("http://unused")`.
pub fn service_with(upstream: Arc<dyn Upstream>, mirrors: MirrorConfig) -> OciService {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    Mirror::builder()
        .upstreams(mirrors)
        .storage(storage)
        .upstream(upstream)
        .build()
        .unwrap()
        .service()
}

pub fn fake_service() -> (OciService, Arc<FakeUpstream>) {
    let fake = Arc::new(FakeUpstream::default());
    (
        service_with(fake.clone(), mirrors("http://127.0.0.1:9")),
        fake,
    )
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `code` of the OCI error body.
    pub fn error_code(&self) -> String {
        let envelope: oci_cache_http::ErrorEnvelope =
            serde_json::from_slice(&self.body).expect("an OCI error body");
        assert_eq!(envelope.errors.len(), 1);
        envelope.errors[0].code.clone()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub async fn call(svc: &OciService, method: Method, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = svc
        .handle(builder.body(Empty::<Bytes>::new()).unwrap())
        .await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(svc: &OciService, uri: &str) -> Answer {
    call(svc, Method::GET, uri, &[]).await
}

// ---------------------------------------------------------------- CONNECT proxy

/// A minimal HTTP `CONNECT` proxy on 127.0.0.1:0 that counts tunnels and
/// records their targets; `start_with_hosts` also maps host names to IPs
/// (a test's DNS).
pub struct ConnectProxy {
    addr: SocketAddr,
    pub targets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> Self {
        Self::start_with_hosts(&[]).await
    }

    /// Tunnels to `name:port` go to `ip:port` for each `(name, ip)`.
    pub async fn start_with_hosts(hosts: &[(&str, &str)]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hosts: Vec<(String, String)> = hosts
            .iter()
            .map(|(n, ip)| (n.to_string(), ip.to_string()))
            .collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                let hosts = hosts.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let target = text
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    assert!(text.starts_with("CONNECT "), "{text}");
                    seen.lock().unwrap().push(target.clone());
                    let dial = match target.rsplit_once(':') {
                        Some((name, port)) => match hosts.iter().find(|(n, _)| n == name) {
                            Some((_, ip)) => format!("{ip}:{port}"),
                            None => target.clone(),
                        },
                        None => target.clone(),
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&dial).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        ConnectProxy {
            addr,
            targets,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `inner` behind client authentication: one user `user` with password `pw`
/// in an htpasswd file written under `dir`; the upstreams and local prefixes
/// named in `public` are public, all others at the default (authenticated).
pub fn behind_auth(
    inner: OciService,
    config: &MirrorConfig,
    dir: &std::path::Path,
    user: &str,
    public: &[&str],
) -> oci_cache_http::Pipeline {
    use oci_cache_http::client_auth::{Access, ClientAuth, ClientAuthConfig};
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("{user}:{}\n", bcrypt::hash("pw", 4).unwrap()),
    )
    .unwrap();
    let auth = ClientAuth::new(
        &ClientAuthConfig {
            htpasswd,
            realm: "test-realm".into(),
            access: public
                .iter()
                .map(|name| (name.to_string(), Access::Public))
                .collect(),
            private_digests: None,
        },
        config,
        inner.local_prefixes(),
    )
    .unwrap();
    oci_cache_http::Pipeline::new(inner, Some(Arc::new(auth)))
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from a raw socket.
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}
