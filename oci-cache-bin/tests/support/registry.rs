//! Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1, as the
//! origin the tests push to, or in proxy mode as a stand-in mirror; with its
//! access log parsed so tests can count what reached it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::image::Layout;
use super::{free_port, http, skopeo, ServerProcess};

/// One line of the registry's access log (Apache combined format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessRecord {
    /// Request method.
    pub(crate) method: String,
    /// Request target, query included.
    pub(crate) path: String,
    /// Response status.
    pub(crate) status: u16,
    /// Body bytes sent.
    pub(crate) bytes: u64,
}

/// A `docker-registry serve` process with filesystem storage in a temp dir.
#[derive(Debug)]
pub(crate) struct Origin {
    server: ServerProcess,
    access_log: PathBuf,
    root: PathBuf,
    _dir: TempDir,
}

impl Origin {
    /// An origin registry: anonymous, push allowed.
    pub(crate) fn start() -> Origin {
        Origin::start_with("")
    }

    /// A pull-through proxy registry in front of `remote_url`
    /// (`http://127.0.0.1:PORT`): the stand-in mirror used to prove the harness.
    pub(crate) fn start_proxy(remote_url: &str) -> Origin {
        Origin::start_with(&format!("proxy:\n  remoteurl: {remote_url}\n"))
    }

    /// An origin storing in `root` (kept across restarts: push to an anonymous
    /// origin, stop it, serve the same content with auth) with `extra_config`
    /// (YAML, e.g. an `auth:` section) added to its config.
    pub(crate) fn start_on(root: &Path, extra_config: &str) -> Origin {
        Origin::start_at(Some(root), "", extra_config)
    }

    /// Like [`Origin::start_on`], serving HTTPS with `tls_config` (the YAML
    /// of `http.tls`, indented by four spaces: `certificate`, `key`, `clientcas`).
    pub(crate) fn start_tls_on(root: &Path, tls_config: &str) -> Origin {
        Origin::start_at(Some(root), &format!("  tls:\n{tls_config}"), "")
    }

    /// An origin holding `images` (`(layout, "repo:tag")`), pushed with skopeo.
    pub(crate) fn with_images(images: &[(&Layout, &str)]) -> Origin {
        let origin = Origin::start();
        for (layout, repo_tag) in images {
            skopeo::push(layout, &origin.host(), repo_tag);
        }
        origin
    }

    fn start_with(extra_config: &str) -> Origin {
        Origin::start_at(None, "", extra_config)
    }

    fn start_at(root: Option<&Path>, http_extra: &str, extra_config: &str) -> Origin {
        let dir = tempfile::Builder::new()
            .prefix("e2e-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let root = root.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        // The access log goes to stdout (gorilla's combined logger), the
        // application log to stderr: they land in separate files.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: e2e-not-a-secret\n{http_extra}\
             {extra_config}",
            root = root.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let access_log = dir.path().join("access.log");
        let stderr_path = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config_path)
            // The registry reads REGISTRY_* overrides from the environment;
            // the test's config must be the only one.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(File::create(&access_log).unwrap())
            .stderr(File::create(&stderr_path).unwrap());
        let server = ServerProcess::spawn("docker-registry", cmd, port, stderr_path, "/v2/");
        Origin {
            server,
            access_log,
            root,
            _dir: dir,
        }
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the registry's own storage.
    pub(crate) fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's storage directory (`storage.filesystem.rootdirectory`).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the registry process; its port then refuses connections.
    pub(crate) fn stop(&mut self) {
        self.server.stop();
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn host(&self) -> String {
        self.server.host()
    }

    /// The server's process id.
    #[allow(dead_code)] // Used by benches/compare.rs, not by the tests.
    pub(crate) fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The access log so far.
    ///
    /// A line is written after its response has been sent, so a client can be
    /// done before the line is: wait until the log stops growing (at most ~2 s).
    pub(crate) fn records(&self) -> Vec<AccessRecord> {
        self.access_log()
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// The raw access log (combined format, user agent last), once it
    /// stopped growing, as for [`Origin::records`].
    pub(crate) fn access_log(&self) -> String {
        let mut last = String::new();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let now = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// Requests with `method` whose path contains `path_contains`.
    pub(crate) fn count(&self, method: &str, path_contains: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Successful blob GETs (200 or 206), the requests a cache must avoid.
    pub(crate) fn blob_gets(&self) -> Vec<AccessRecord> {
        self.records()
            .into_iter()
            .filter(|r| {
                r.method == "GET" && r.path.contains("/blobs/") && matches!(r.status, 200 | 206)
            })
            .collect()
    }

    /// How often each blob (by digest) was fetched with a successful GET,
    /// skipping the first `skip` blob GETs (e.g. those of a push check).
    pub(crate) fn blob_get_counts(&self, skip: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.blob_gets().iter().skip(skip) {
            *counts.entry(blob_digest(&r.path).to_owned()).or_default() += 1;
        }
        counts
    }

    /// Total body bytes the registry sent.
    pub(crate) fn bytes_served(&self) -> u64 {
        self.records().iter().map(|r| r.bytes).sum()
    }

    /// The digest `repo:reference` resolves to here (`Docker-Content-Digest` of a HEAD).
    pub(crate) fn manifest_digest(&self, repo: &str, reference: &str) -> String {
        let resp = http::request(
            &self.host(),
            "HEAD",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", http::CONTAINERD_ACCEPT)],
        )
        .unwrap();
        assert_eq!(resp.status, 200, "HEAD {repo}:{reference} on the origin");
        resp.header("docker-content-digest").unwrap().to_owned()
    }
}

/// The digest in `/v2/<repo>/blobs/<digest>[?query]`.
fn blob_digest(path: &str) -> &str {
    let after = path.rsplit_once("/blobs/").map_or(path, |(_, d)| d);
    after.split('?').next().unwrap_or(after)
}

/// Parse `127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 123 "referer" "agent"`.
pub(crate) fn parse_access_line(line: &str) -> Option<AccessRecord> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?.to_owned();
    let path = req.next()?.to_owned();
    let mut nums = rest.split_whitespace();
    let status = nums.next()?.parse().ok()?;
    // "-" when nothing was sent.
    let bytes = nums.next()?.parse().unwrap_or(0);
    Some(AccessRecord {
        method,
        path,
        status,
        bytes,
    })
}

#[test]
fn access_line_parses() {
    let line = r#"127.0.0.1 - - [22/Nov/2026:11:00:00 +0000] "GET /v2/a/blobs/sha256:ab?ns=x HTTP/1.1" 200 1234 "" "skopeo/1.9.3""#;
    assert_eq!(
        parse_access_line(line),
        Some(AccessRecord {
            method: "GET".into(),
            path: "/v2/a/blobs/sha256:ab?ns=x".into(),
            status: 200,
            bytes: 1234,
        })
    );
    let head = r#"127.0.0.1 - - [22/Nov/2026:11:00:00 +0000] "HEAD /v2/ HTTP/1.1" 200 - "" "x""#;
    assert_eq!(parse_access_line(head).map(|r| r.bytes), Some(0));
    assert_eq!(blob_digest("/v2/a/b/blobs/sha256:ab?ns=x"), "sha256:ab");
    assert_eq!(parse_access_line("time=x level=info msg=hello"), None);
}
