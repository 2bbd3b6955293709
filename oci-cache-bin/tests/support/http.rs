//! A minimal HTTP/1.1 client on `std::net::TcpStream`, and a puller that talks
//! to a mirror the way containerd does with a hosts.toml mirror (`?ns=`).
//!
//! Hand-written so the tests see the exact bytes on the wire and need no client
//! crate; it speaks just enough HTTP/1.1: one request per connection,
//! `Content-Length`, chunked, or read-to-close bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The Accept header containerd 1.6+ sends when resolving a manifest.
pub(crate) const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";

/// One HTTP response, body read whole.
#[derive(Debug)]
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// Headers, names lowercased, in the order received.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request to `host` (`127.0.0.1:PORT`) and read the whole answer.
pub(crate) fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    request_with_body(host, method, path, headers, &[])
}

/// [`request`] with a body (sent with its `Content-Length`).
pub(crate) fn request_with_body(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oci-cache-e2e\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;

    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_data(format!("bad status line {line:?}")))?;
    let mut resp_headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad_data(format!("bad header line {l:?}")))?;
        resp_headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut resp = Response {
        status,
        headers: resp_headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        resp.body = read_chunked(&mut reader)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad_data(format!("bad content-length {len:?}")))?;
        reader.take(len as u64).read_to_end(&mut resp.body)?;
        // Some servers (Go's http.Error after a failed range) keep a stale
        // Content-Length on an error answer: only a success must be whole.
        if resp.body.len() != len && (200..300).contains(&status) {
            return Err(bad_data(format!(
                "body ended after {} of {len} bytes",
                resp.body.len()
            )));
        }
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_hex = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad_data(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

fn bad_data(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What a containerd-like pull fetched.
#[derive(Debug)]
pub(crate) struct NsPull {
    /// Digest the tag resolved to (the top-level manifest or index).
    pub(crate) digest: String,
    /// Every manifest digest fetched (index, then the chosen image manifest).
    pub(crate) manifests: Vec<String>,
    /// Every blob digest fetched (config and layers), each verified.
    pub(crate) blobs: Vec<String>,
}

/// The query suffix containerd appends for a mirror: `?ns=<host>`.
fn ns_query(ns: &str) -> String {
    format!("?ns={ns}")
}

/// Pull `repo:tag` through `mirror` as containerd does with a hosts.toml mirror:
/// HEAD the tag with `?ns=`, GET the manifest by digest, descend into an index
/// (platform linux/amd64), then GET config and layers, all with `?ns=`. Every
/// object is checked against its digest; a failure is returned as text.
pub(crate) fn ns_pull(mirror: &str, ns: &str, repo: &str, tag: &str) -> Result<NsPull, String> {
    let q = ns_query(ns);
    let accept = [("Accept", CONTAINERD_ACCEPT)];
    let head = request(
        mirror,
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}{q}"),
        &accept,
    )
    .map_err(|e| format!("HEAD manifest: {e}"))?;
    if head.status != 200 {
        return Err(format!("HEAD {repo}:{tag}?ns={ns}: status {}", head.status));
    }
    let digest = head
        .header("docker-content-digest")
        .ok_or("HEAD manifest: no Docker-Content-Digest")?
        .to_owned();
    let mut pull = NsPull {
        digest: digest.clone(),
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    let mut next = Some(digest);
    while let Some(d) = next.take() {
        let m = get_verified(mirror, &format!("/v2/{repo}/manifests/{d}{q}"), &d, &accept)?;
        pull.manifests.push(d);
        let json: serde_json::Value =
            serde_json::from_slice(&m).map_err(|e| format!("manifest is not json: {e}"))?;
        if let Some(list) = json["manifests"].as_array() {
            let amd64 = list
                .iter()
                .find(|e| e["platform"]["architecture"] == "amd64")
                .ok_or("index has no linux/amd64 entry")?;
            next = amd64["digest"].as_str().map(str::to_owned);
            continue;
        }
        let mut blobs = vec![json["config"]["digest"].as_str().unwrap_or("").to_owned()];
        for layer in json["layers"].as_array().into_iter().flatten() {
            blobs.push(layer["digest"].as_str().unwrap_or("").to_owned());
        }
        for b in blobs {
            get_verified(mirror, &format!("/v2/{repo}/blobs/{b}{q}"), &b, &[])?;
            pull.blobs.push(b);
        }
    }
    Ok(pull)
}

fn get_verified(
    host: &str,
    path: &str,
    digest: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let resp = request(host, "GET", path, headers).map_err(|e| format!("GET {path}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("GET {path}: status {}", resp.status));
    }
    let got = sha256_digest(&resp.body);
    if got != digest {
        return Err(format!("GET {path}: body hashes to {got}"));
    }
    Ok(resp.body)
}
