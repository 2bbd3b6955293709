//! ACME certificates from Debian's pebble with real challenge validation:
//! the CA connects back to the mirror's TLS port (TLS-ALPN-01) or its
//! HTTP-01 listener, then skopeo pulls over HTTPS verifying the issued
//! certificate against pebble's root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::fixtures::small_image;
use super::trust::test_pki;
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::pebble::{self, wait_for_log, Pebble};
use crate::support::registry::Origin;
use crate::support::{free_port, skopeo};

const ISSUED: &str = "the ACME server issued the certificate";
const CACHED: &str = "using the cached ACME certificate";

/// The config of a mirror ordering from `pebble` with `challenge`.
fn acme_config(
    pebble: &Pebble,
    challenge: &str,
    extra: &str,
    cache: &Path,
    origin: &Origin,
) -> String {
    format!(
        "[tls.acme]\ndomains = [\"localhost\"]\ncontact = [\"ops@example.com\"]\n\
         directory_url = \"{url}\"\nca_bundle = \"{ca}\"\nchallenge = \"{challenge}\"\n\
         cache_dir = \"{cache}\"\n{extra}\n\
         [[upstream]]\nname = \"origin.test\"\nurl = \"{origin}\"\n",
        url = pebble.directory_url(),
        ca = pebble.https_ca.display(),
        cache = cache.display(),
        origin = origin.url(),
    )
}

fn start_mirror(port: u16, config: &str) -> Mirror {
    Mirror::start_tls_on(
        port,
        &[
            "--config",
            "{dir}/oci-cache.toml",
            "--storage-dir",
            "{dir}/storage",
            "--default-upstream",
            "origin.test",
        ],
        &[("oci-cache.toml", config)],
    )
}

/// `skopeo copy` of `image` through `localhost:port` trusting only the CA
/// in `cert_dir`; returns the copied digest.
fn pull(port: u16, cert_dir: &Path, dest: &Path) -> Result<String, String> {
    let image = format!("localhost:{port}/e2e/app:v1");
    let cert_dir = cert_dir.display().to_string();
    skopeo::copy_with(&image, dest, &["--src-cert-dir", &cert_dir]).map(|c| c.digest)
}

/// pebble, an origin holding `e2e/app:v1`, and the `--src-cert-dir` that
/// trusts pebble's issuing root (and nothing else).
struct Setup {
    work: tempfile::TempDir,
    pebble: Pebble,
    origin: Origin,
    digest: String,
    trusted: std::path::PathBuf,
    untrusted: std::path::PathBuf,
}

fn setup(http_port: u16, tls_port: u16) -> Setup {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    test_pki(&pki);
    let pebble = Pebble::start(&pki, http_port, tls_port);
    let app = small_image(&work.path().join("app"), 2501);
    let origin = Origin::start();
    skopeo::push(&app, &origin.host(), "e2e/app:v1");
    let digest = origin.manifest_digest("e2e/app", "v1");
    let trusted = work.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::write(trusted.join("pebble-root.crt"), pebble.issuing_root()).unwrap();
    // A CA that did not issue the certificate: the pull must fail with it.
    let untrusted = work.path().join("untrusted");
    std::fs::create_dir_all(&untrusted).unwrap();
    std::fs::copy(pki.join("ca.crt"), untrusted.join("ca.crt")).unwrap();
    Setup {
        work,
        pebble,
        origin,
        digest,
        trusted,
        untrusted,
    }
}

#[test]
fn tls_alpn_01_certificate_is_verified_by_skopeo_and_reused_after_a_restart() {
    if !pebble::available(
        "tls_alpn_01_certificate_is_verified_by_skopeo_and_reused_after_a_restart",
    ) {
        return;
    }
    let port = free_port();
    let s = setup(free_port(), port);
    let cache = s.work.path().join("acme-cache");
    let config = acme_config(&s.pebble, "tls-alpn-01", "", &cache, &s.origin);
    let mut mirror = start_mirror(port, &config);
    assert!(
        wait_for_log(|| mirror.log(), ISSUED, Duration::from_secs(60)),
        "no certificate issued:\n{}\npebble:\n{}",
        mirror.log(),
        s.pebble.log()
    );
    assert_eq!(s.pebble.orders(), 1);
    // pebble validated the challenge by connecting to the mirror's TLS port.
    assert!(
        s.pebble.log().contains("set VALID by completed challenge"),
        "{}",
        s.pebble.log()
    );
    let untrusted = pull(port, &s.untrusted, &s.work.path().join("c0")).unwrap_err();
    assert!(
        untrusted.contains("certificate") || untrusted.contains("x509"),
        "{untrusted}"
    );
    assert_eq!(
        pull(port, &s.trusted, &s.work.path().join("c1")).unwrap(),
        s.digest
    );
    for name in ["certificate.pem", "key.pem", "account.json"] {
        let file = std::fs::read_dir(&cache)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join(name);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // A restart serves the cached certificate: no new order.
    mirror.terminate();
    let mirror = start_mirror(port, &config);
    assert!(
        wait_for_log(|| mirror.log(), CACHED, Duration::from_secs(30)),
        "{}",
        mirror.log()
    );
    assert_eq!(
        pull(port, &s.trusted, &s.work.path().join("c2")).unwrap(),
        s.digest
    );
    assert_eq!(s.pebble.orders(), 1, "{}", mirror.log());
    assert!(!mirror.log().contains("ordering an ACME certificate"));
}

#[test]
fn http_01_certificate_is_verified_by_skopeo() {
    if !pebble::available("http_01_certificate_is_verified_by_skopeo") {
        return;
    }
    let (port, http_port) = (free_port(), free_port());
    let s = setup(http_port, free_port());
    let cache = s.work.path().join("acme-cache");
    let config = acme_config(
        &s.pebble,
        "http-01",
        &format!("http01_listen = \"127.0.0.1:{http_port}\""),
        &cache,
        &s.origin,
    );
    let mirror = start_mirror(port, &config);
    assert!(
        wait_for_log(|| mirror.log(), ISSUED, Duration::from_secs(60)),
        "no certificate issued:\n{}\npebble:\n{}",
        mirror.log(),
        s.pebble.log()
    );
    assert!(
        s.pebble.log().contains("set VALID by completed challenge"),
        "{}",
        s.pebble.log()
    );
    assert_eq!(
        pull(port, &s.trusted, &s.work.path().join("c1")).unwrap(),
        s.digest
    );
    // The challenge port serves challenges only, never the registry.
    let plain =
        crate::support::http::request(&format!("127.0.0.1:{http_port}"), "GET", "/v2/", &[])
            .unwrap();
    assert_eq!(plain.status, 404);
}

#[test]
fn without_a_reachable_acme_server_or_a_cached_certificate_the_mirror_refuses_to_start() {
    let work = tempfile::tempdir().unwrap();
    let dead = free_port();
    let config = work.path().join("oci-cache.toml");
    std::fs::write(
        &config,
        format!(
            "[tls.acme]\ndomains = [\"mirror.example.com\"]\ndirectory_url = \"https://127.0.0.1:{dead}/dir\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(oci_cache_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--storage-dir")
        .arg(work.path().join("storage"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the ACME server at https://127.0.0.1:{dead}/dir"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("put a valid certificate in the cache directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("oci-cache serving"), "{stderr}");
}
