//! A token server for docker-registry's `auth: token` on 127.0.0.1 (or
//! another loopback address, as "another host"): it
//! checks Basic credentials and issues ES256 JWTs whose header carries the
//! signing certificate (`x5c`), which the registry verifies against its
//! `rootcertbundle` (the same self-signed certificate, made with `openssl`).
//!
//! Tokens are short-lived (`expires_in` as configured), and token number
//! `stale_token` (0-based) is issued already expired in the registry's eyes
//! (`exp` before its 60 s leeway) while the response claims it is fresh: the
//! client's use of it is refused with 401, as when a token runs out mid-pull.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `service` (JWT audience) the registry is configured with.
pub(crate) const SERVICE: &str = "e2e-registry";
/// The JWT issuer the registry trusts.
pub(crate) const ISSUER: &str = "e2e-token-issuer";

#[derive(Debug)]
pub(crate) struct TokenServer {
    ip: String,
    port: u16,
    cert_path: PathBuf,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    username: String,
    password: String,
    expires_in: u64,
    stale_token: Option<usize>,
}

impl TokenServer {
    /// A token server in `dir` accepting `username`/`password`.
    pub(crate) fn start(
        dir: &Path,
        username: &str,
        password: &str,
        expires_in: u64,
        stale_token: Option<usize>,
    ) -> TokenServer {
        TokenServer::start_on(
            "127.0.0.1",
            dir,
            username,
            password,
            expires_in,
            stale_token,
        )
    }

    /// [`TokenServer::start`] listening on `ip` (e.g. `127.0.0.2`).
    pub(crate) fn start_on(
        ip: &str,
        dir: &Path,
        username: &str,
        password: &str,
        expires_in: u64,
        stale_token: Option<usize>,
    ) -> TokenServer {
        let cert_path = dir.join("token-cert.pem");
        let key_path = dir.join("token-key.pem");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={ISSUER}"))
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .expect("openssl is needed for the token-auth test");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key_der = pem_der(&std::fs::read_to_string(&key_path).unwrap(), "PRIVATE KEY");
        let cert_der = pem_der(&std::fs::read_to_string(&cert_path).unwrap(), "CERTIFICATE");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &SystemRandom::new(),
        )
        .unwrap();
        let issuer = Arc::new(Issuer {
            key,
            cert_der,
            username: username.to_owned(),
            password: password.to_owned(),
            expires_in,
            stale_token,
        });
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (i, r, s) = (issued.clone(), refused.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        // One request per connection, answered inline: bounded by design.
                        let _ = answer(stream, &issuer, &i, &r);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer {
            ip: ip.to_owned(),
            port,
            cert_path,
            issued,
            refused,
            stop,
            thread: Some(thread),
        }
    }

    /// The realm URL.
    pub(crate) fn realm(&self) -> String {
        format!("http://{}:{}/token", self.ip, self.port)
    }

    /// The registry config section trusting this server.
    pub(crate) fn registry_auth_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert_path.display()
        )
    }

    /// Tokens issued so far.
    pub(crate) fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Token requests refused for bad or missing credentials.
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pem_der(pem: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).unwrap() + begin.len();
    let stop = pem.find(&end).unwrap();
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn answer(
    stream: TcpStream,
    issuer: &Issuer,
    issued: &AtomicUsize,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
        }
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", issuer.username, issuer.password))
    );
    let mut stream = stream;
    if authorization.as_deref() != Some(expected.as_str()) {
        refused.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"details":"bad credentials"}"#;
        return write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm=\"e2e\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(percent_decode)
        .collect();
    let n = issued.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The registry allows 60 s of clock skew past `exp`: a stale token lies further back.
    let exp = if issuer.stale_token == Some(n) {
        now - 120
    } else {
        now + issuer.expires_in as i64
    };
    let token = jwt(issuer, &scopes, now, exp, n);
    let body = format!(
        r#"{{"token":"{token}","access_token":"{token}","expires_in":{}}}"#,
        issuer.expires_in
    );
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// `repository:NAME:a,b` scopes as the token's `access` claim.
fn access(scopes: &[String]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    serde_json::Value::Array(entries)
}

fn jwt(issuer: &Issuer, scopes: &[String], now: i64, exp: i64, n: usize) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&issuer.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": issuer.username,
        "aud": SERVICE,
        "exp": exp,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("e2e-{n}"),
        "access": access(scopes),
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    format!("{signing_input}.{}", b64(signature.as_ref()))
}
