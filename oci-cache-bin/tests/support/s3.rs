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

    /// Keys in `bucket` (first 1000), from ListObjectsV2.
    pub(crate) fn keys(&self, bucket: &str) -> Vec<String> {
        let resp = http::request(
            &self.server.host(),
            "GET",
            &format!("/{bucket}?list-type=2"),
            &[],
        )
        .unwrap();
        assert_eq!(resp.status, 200, "list bucket {bucket}");
        let body = String::from_utf8_lossy(&resp.body);
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
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
