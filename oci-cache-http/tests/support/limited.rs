//! A scripted upstream that behaves like a rate-limited public registry:
//! it serves `library/img<N>:latest` images (a config and a layer each),
//! counts the requests it is handling at once, enforces a Docker-Hub-like
//! pull allowance (manifest GETs per window, `429` + `Retry-After` past it,
//! `ratelimit-*` headers on every manifest answer) and logs every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use oci_cache_core::digest::Digest;
use tokio::sync::oneshot;

/// How the registry behaves.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Images served: `library/img0` … `library/img{images-1}`.
    pub images: usize,
    /// Manifest GETs allowed per window, and the window.
    pub allowance: Option<(u64, Duration)>,
    /// Wait before answering a manifest, token or tag request.
    pub manifest_delay: Duration,
    /// Wait before answering a blob.
    pub blob_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            images: 20,
            allowance: None,
            manifest_delay: Duration::from_millis(5),
            blob_delay: Duration::from_millis(20),
        }
    }
}

/// One request the registry saw.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    /// When it arrived and when it was answered.
    pub at: Instant,
    pub answered: Instant,
    pub status: u16,
}

struct State {
    limits: Limits,
    /// Manifests by `repository` and by digest; blobs by digest.
    manifests: HashMap<String, (Bytes, Digest)>,
    blobs: HashMap<String, Bytes>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    log: Mutex<Vec<Logged>>,
    /// Manifest GETs in the current window, and when it began.
    window: Mutex<(u64, Instant)>,
}

/// The running registry; stops when dropped.
pub struct LimitedRegistry {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

/// The manifest of image `n` and its two blobs.
fn image(n: usize) -> (Bytes, Vec<Bytes>) {
    let config = Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","n":{n}}}"#
    ));
    let layer = Bytes::from(vec![n as u8; 4096 + n]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        Digest::sha256_of(&config),
        config.len(),
        Digest::sha256_of(&layer),
        layer.len()
    );
    (Bytes::from(manifest), vec![config, layer])
}

impl LimitedRegistry {
    pub async fn start(limits: Limits) -> Self {
        let mut manifests = HashMap::new();
        let mut blobs = HashMap::new();
        for n in 0..limits.images {
            let (manifest, parts) = image(n);
            let digest = Digest::sha256_of(&manifest);
            manifests.insert(format!("library/img{n}"), (manifest, digest));
            for blob in parts {
                blobs.insert(Digest::sha256_of(&blob).to_string(), blob);
            }
        }
        let state = Arc::new(State {
            limits,
            manifests,
            blobs,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            window: Mutex::new((0, Instant::now())),
        });
        let shared = state.clone();
        let (addr, stop) = super::serve_http("127.0.0.1", move |req| {
            let state = shared.clone();
            async move { Ok::<_, std::io::Error>(answer(&state, req).await) }
        })
        .await;
        LimitedRegistry {
            addr,
            state,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The digest of image `n`'s manifest and of its blobs.
    pub fn digests(n: usize) -> (Digest, Vec<Digest>) {
        let (manifest, blobs) = image(n);
        (
            Digest::sha256_of(&manifest),
            blobs.iter().map(|b| Digest::sha256_of(b)).collect(),
        )
    }

    /// Most requests it was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for LimitedRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Decrements the in-flight count when the answer is done (or dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(&state.in_flight);
    let at = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = respond(state, &method, &path).await;
    state.log.lock().unwrap().push(Logged {
        method,
        path,
        at,
        answered: Instant::now(),
        status: response.status().as_u16(),
    });
    response
}

async fn respond(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let limits = &state.limits;
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Some((repository, reference)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.split_once("/manifests/"))
    {
        tokio::time::sleep(limits.manifest_delay).await;
        let Some((bytes, digest)) = state.manifests.get(repository) else {
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        if reference != "latest" && reference != digest.to_string() {
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
        let headers = response.headers_mut();
        if let Some((allowed, window)) = limits.allowance {
            let mut counted = state.window.lock().unwrap();
            if counted.1.elapsed() >= window {
                *counted = (0, Instant::now());
            }
            let seconds = window.saturating_sub(counted.1.elapsed()).as_secs().max(1);
            let w = window.as_secs();
            if *method == Method::GET {
                if counted.0 >= allowed {
                    headers.insert(
                        "ratelimit-limit",
                        format!("{allowed};w={w}").parse().unwrap(),
                    );
                    headers.insert("ratelimit-remaining", format!("0;w={w}").parse().unwrap());
                    headers.insert("retry-after", seconds.to_string().parse().unwrap());
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    return response;
                }
                counted.0 += 1;
            }
            let left = allowed - counted.0;
            headers.insert(
                "ratelimit-limit",
                format!("{allowed};w={w}").parse().unwrap(),
            );
            headers.insert(
                "ratelimit-remaining",
                format!("{left};w={w}").parse().unwrap(),
            );
        }
        headers.insert(
            "content-type",
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        headers.insert("docker-content-digest", digest.to_string().parse().unwrap());
        headers.insert("content-length", bytes.len().into());
        if *method == Method::GET {
            *response.body_mut() = Full::new(bytes.clone());
        }
        return response;
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        tokio::time::sleep(limits.blob_delay).await;
        let Some(bytes) = state.blobs.get(digest) else {
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        response
            .headers_mut()
            .insert("content-length", bytes.len().into());
        if *method == Method::GET {
            *response.body_mut() = Full::new(bytes.clone());
        }
        return response;
    }
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
