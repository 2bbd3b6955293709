//! A real S3-compatible server on 127.0.0.1: moto's `moto_server` (PyPI
//! `moto[server]`, installed by `scripts/install-test-deps` into a virtual
//! environment). Moto does not check signatures, so the tests can create and
//! list buckets with plain HTTP.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::{free_port, http, ServerProcess};

/// `moto_server` from the virtual environment `scripts/s3-server install`
/// makes (`$OCI_CACHE_TEST_VENV`, default `.venv-test` in the repository),
/// else from `PATH`.
fn moto_server() -> PathBuf {
    let venv = std::env::var_os("OCI_CACHE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test"));
    let bin = venv.join("bin/moto_server");
    if bin.is_file() {
        bin
    } else {
        PathBuf::from("moto_server")
    }
}

/// A running `moto_server`, killed on drop.
#[derive(Debug)]
pub(crate) struct S3Server {
    server: ServerProcess,
    _dir: TempDir,
}

impl S3Server {
    /// Start moto, or say loudly why not and return `None` (a failure under `CI=true`).
    pub(crate) fn start(test: &str) -> Option<S3Server> {
        let found = Command::new(moto_server())
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let msg =
                format!("{test}: SKIPPED — moto_server not found; run scripts/install-test-deps");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: refusing to skip)");
            }
            eprintln!("\n!!!!!!!! {msg}\n");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("e2e-s3-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = dir.path().join("moto.log");
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap());
        let server = ServerProcess::spawn("moto_server", cmd, port, log, "/");
        Some(S3Server { server, _dir: dir })
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.server.host())
    }

    /// Create `bucket` (path-style `PUT /bucket`).
    pub(crate) fn create_bucket(&self, bucket: &str) {
        let resp = http::request(&self.server.host(), "PUT", &format!("/{bucket}"), &[]).unwrap();
        assert_eq!(resp.status, 200, "create bucket {bucket}");
    }

    /// Keys of the incomplete multipart uploads in `bucket`, from
    /// ListMultipartUploads.
    pub(crate) fn incomplete_uploads(&self, bucket: &str) -> Vec<String> {
        self.listed_keys(bucket, "uploads")
    }

    /// Keys in `bucket` (first 1000), from ListObjectsV2.
    pub(crate) fn keys(&self, bucket: &str) -> Vec<String> {
        self.listed_keys(bucket, "list-type=2")
    }

    /// Every `<Key>` of the answer to `GET /bucket?query` (a listing).
    fn listed_keys(&self, bucket: &str, query: &str) -> Vec<String> {
        let resp = http::request(
            &self.server.host(),
            "GET",
            &format!("/{bucket}?{query}"),
            &[],
        )
        .unwrap();
        assert_eq!(resp.status, 200, "list {bucket}?{query}");
        let body = String::from_utf8_lossy(&resp.body);
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

/// A relay in front of an S3 server that drops `If-None-Match` and
/// `If-Match` from every request (`scripts/unconditional_s3.py`): the bucket
/// behind it ignores conditional writes, as S3 did until 2024 and as some
/// S3-compatible servers still do. Moto itself honours them and has no
/// setting to stop, and a test-only switch in the binary would test the
/// switch, not a bucket.
#[derive(Debug)]
pub(crate) struct UnconditionalRelay {
    server: ServerProcess,
    log: PathBuf,
    _dir: TempDir,
}

impl UnconditionalRelay {
    /// A relay to `s3`, in the Python of moto's virtual environment.
    pub(crate) fn start(s3: &S3Server) -> UnconditionalRelay {
        let python = moto_server().with_file_name("python3");
        let python = if python.is_file() {
            python
        } else {
            PathBuf::from("python3")
        };
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/scripts/unconditional_s3.py");
        let dir = tempfile::Builder::new()
            .prefix("e2e-s3-relay-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = dir.path().join("relay.log");
        let target = s3.server.host();
        let (host, target_port) = target.split_once(':').unwrap();
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .args([&port.to_string(), host, target_port])
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap());
        let server = ServerProcess::spawn("unconditional_s3.py", cmd, port, log.clone(), "/");
        UnconditionalRelay {
            server,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`: use it as the bucket's endpoint.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.server.host())
    }

    /// How many conditional headers it dropped so far.
    pub(crate) fn stripped(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("stripped "))
            .count()
    }
}

#[test]
fn moto_creates_and_lists() {
    let Some(s3) = S3Server::start("moto_creates_and_lists") else {
        return;
    };
    s3.create_bucket("e2e-probe");
    assert!(s3.keys("e2e-probe").is_empty());
    let put = http::request_with_body(
        &s3.server.host(),
        "PUT",
        "/e2e-probe/a/b.txt",
        &[],
        b"hello",
    )
    .unwrap();
    assert_eq!(put.status, 200);
    assert_eq!(s3.keys("e2e-probe"), vec!["a/b.txt".to_owned()]);
}

/// Moto refuses a second `If-None-Match: *` PUT of a key; through the relay
/// both succeed, the second overwriting, as on a bucket without
/// conditional writes.
#[test]
fn the_unconditional_relay_makes_moto_ignore_conditional_writes() {
    let Some(s3) = S3Server::start("the_unconditional_relay_makes_moto_ignore_conditional_writes")
    else {
        return;
    };
    s3.create_bucket("e2e-cond");
    // Moto answers an anonymous failed precondition 403; signed, 412 as S3
    // does (it does not check the signature).
    let auth = "AWS4-HMAC-SHA256 Credential=e2e/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=0";
    let put = |host: &str, key: &str, body: &[u8]| {
        let headers = [("if-none-match", "*"), ("authorization", auth)];
        http::request_with_body(host, "PUT", key, &headers, body)
            .unwrap()
            .status
    };
    let moto = s3.server.host();
    assert_eq!(put(&moto, "/e2e-cond/direct", b"one"), 200);
    assert_eq!(put(&moto, "/e2e-cond/direct", b"two"), 412);
    let relay = UnconditionalRelay::start(&s3);
    let host = relay.endpoint().trim_start_matches("http://").to_owned();
    assert_eq!(put(&host, "/e2e-cond/relayed", b"one"), 200);
    assert_eq!(put(&host, "/e2e-cond/relayed", b"two"), 200);
    let got = http::request(
        &host,
        "GET",
        "/e2e-cond/relayed",
        &[("authorization", auth)],
    )
    .unwrap();
    assert_eq!((got.status, got.body.as_slice()), (200, b"two".as_slice()));
    let head = http::request(
        &host,
        "HEAD",
        "/e2e-cond/relayed",
        &[("authorization", auth)],
    )
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3"));
    assert_eq!(relay.stripped(), 2);
}
