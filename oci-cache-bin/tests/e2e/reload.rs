//! Issue 25 item 5: the process lifecycle. SIGHUP reloads the configuration
//! of a running `oci-cache serve` (or keeps it, saying why), `healthcheck`
//! works against a TLS listener, and a file the process cannot read says
//! which user needs access, before anything claims to be serving.

use std::path::Path;
use std::process::Command;

use super::fixtures::small_image;
use super::trust::{handshake, test_pki};
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::Origin;
use crate::support::{free_port, skopeo, tools_available};

/// A config file with one upstream, `reload.test`, served from `url`.
fn upstream_config(url: &str, extra: &str) -> String {
    format!(
        "default_upstream = \"reload.test\"\n{extra}\n\
         [storage]\nkind = \"memory\"\n\n\
         [[upstream]]\nname = \"reload.test\"\nurl = \"{url}\"\n"
    )
}

#[test]
fn sighup_moves_an_upstream_keeps_a_bad_file_out_and_defers_a_listener_change() {
    if !tools_available(
        "sighup_moves_an_upstream_keeps_a_bad_file_out_and_defers_a_listener_change",
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let image = small_image(&work.path().join("img"), 90);
    let origin = Origin::start();
    skopeo::push(&image, &origin.host(), "e2e/reload:v1");
    let pushed = origin.records().len();
    // Nothing listens here: connection refused.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = work.path().join("oci-cache.toml");
    let metrics_port = free_port();
    let metrics = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    std::fs::write(&config, upstream_config(&dead, &metrics)).unwrap();
    let mirror =
        Mirror::start_oci_cache_args_env(&["--config".into(), config.display().to_string()], &[]);
    let m = mirror.host();

    // The dead upstream cannot serve the image, and the origin is not asked.
    let refused = skopeo::copy(&format!("{m}/e2e/reload:v1"), &work.path().join("c0"));
    assert!(
        refused.is_err(),
        "pulled through a dead upstream: {refused:?}"
    );
    assert_eq!(origin.records().len(), pushed, "{:?}", origin.records());

    // The upstream moves to the origin: the next pull goes there.
    std::fs::write(&config, upstream_config(&origin.url(), &metrics)).unwrap();
    let logged = mirror.reload("configuration reloaded");
    assert!(
        logged.contains("configuration reloaded: upstreams changed: changed reload.test"),
        "{logged}"
    );
    let got = skopeo::copy(&format!("{m}/e2e/reload:v1"), &work.path().join("c1")).unwrap();
    assert_eq!(got.digest, image.digest);
    for blob in image.images[0].blobs() {
        assert_eq!(
            origin.count("GET", &blob.digest),
            1,
            "blob {} not fetched once from the new upstream: {:?}",
            blob.digest,
            origin.records()
        );
    }
    let origin_bytes = origin.bytes_served();
    assert!(origin_bytes > 0);

    // A file that does not parse: refused, the running configuration stays
    // and the mirror keeps serving (from its cache and the same upstream).
    std::fs::write(&config, "default_upstream = \n[[upstream]\n").unwrap();
    let logged = mirror.reload("configuration reload refused");
    assert!(
        logged.contains("still serving the previous configuration")
            && logged.contains(&config.display().to_string()),
        "{logged}"
    );
    // An invalid value is refused the same way (the validation of a start).
    std::fs::write(
        &config,
        upstream_config(&origin.url(), &format!("{metrics}\ntag_ttl = \"0s\"")),
    )
    .unwrap();
    let logged = mirror.reload("configuration reload refused");
    assert!(logged.contains("tag_ttl"), "{logged}");
    let again = skopeo::copy(&format!("{m}/e2e/reload:v1"), &work.path().join("c2")).unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(
        origin.bytes_served(),
        origin_bytes,
        "the second pull fetched blobs again"
    );

    // Another metrics address needs a restart: logged, the old one kept.
    let moved = format!("metrics_listen = \"127.0.0.1:{}\"", free_port());
    std::fs::write(&config, upstream_config(&origin.url(), &moved)).unwrap();
    let logged = mirror.reload("configuration reloaded");
    assert!(
        logged.contains("metrics_listen changed, which needs a restart"),
        "{logged}"
    );
    let scrape = std::net::TcpStream::connect(("127.0.0.1", metrics_port));
    assert!(scrape.is_ok(), "the running metrics listener was closed");
}

/// The serving certificate's subject as a new TLS connection sees it.
fn served_subject(pki: &Path, host: &str) -> String {
    let out = handshake(pki, host);
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_owned()
}

fn tls_config(pki: &Path, name: &str) -> String {
    format!(
        "[storage]\nkind = \"memory\"\n\n[tls]\ncert = \"{dir}/{name}.crt\"\nkey = \"{dir}/{name}.key\"\n",
        dir = pki.display()
    )
}

/// `oci-cache healthcheck` with the environment a container gives it.
fn healthcheck(config: &Path, listen: &str) -> std::process::Output {
    Command::new(oci_cache_bin())
        .arg("healthcheck")
        .env("OCI_CACHE_CONFIG", config)
        .env("OCI_CACHE_LISTEN", listen)
        .output()
        .unwrap()
}

#[test]
fn sighup_swaps_the_tls_certificate_and_healthcheck_follows_tls() {
    if !tools_available("sighup_swaps_the_tls_certificate_and_healthcheck_follows_tls") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    test_pki(pki.path());
    let config = pki.path().join("oci-cache.toml");
    std::fs::write(&config, tls_config(pki.path(), "first")).unwrap();
    let config_arg = config.display().to_string();
    let mut mirror = Mirror::start_tls_with_args(&["--config", &config_arg], &[]);
    let host = mirror.host();
    assert!(
        served_subject(pki.path(), &host)
            .replace(" = ", "=")
            .contains("CN=first"),
        "{}",
        handshake(pki.path(), &host)
    );

    let health = healthcheck(&config, &host);
    assert!(
        health.status.success(),
        "healthcheck failed against the TLS listener: {}",
        String::from_utf8_lossy(&health.stderr)
    );

    // Other files: a new connection gets the new certificate.
    std::fs::write(&config, tls_config(pki.path(), "second")).unwrap();
    let logged = mirror.reload("configuration reloaded");
    assert!(logged.contains("tls changed"), "{logged}");
    assert!(
        served_subject(pki.path(), &host)
            .replace(" = ", "=")
            .contains("CN=second"),
        "{}",
        handshake(pki.path(), &host)
    );
    // The health check trusts the certificate the config names now.
    assert!(healthcheck(&config, &host).status.success());

    // A pair that does not match is refused; the second one stays.
    let mismatched = format!(
        "[storage]\nkind = \"memory\"\n\n[tls]\ncert = \"{dir}/first.crt\"\nkey = \"{dir}/second.key\"\n",
        dir = pki.path().display()
    );
    std::fs::write(&config, mismatched).unwrap();
    let logged = mirror.reload("configuration reload refused");
    assert!(logged.contains("do not form a usable pair"), "{logged}");
    assert!(served_subject(pki.path(), &host)
        .replace(" = ", "=")
        .contains("CN=second"));

    std::fs::write(&config, tls_config(pki.path(), "second")).unwrap();
    mirror.terminate();
    let down = healthcheck(&config, &host);
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("unhealthy"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

#[test]
fn an_unreadable_tls_key_names_the_user_and_nothing_claims_to_serve() {
    if !tools_available("an_unreadable_tls_key_names_the_user_and_nothing_claims_to_serve") {
        return;
    }
    if !rustix::process::geteuid().is_root() || which("setpriv").is_none() {
        eprintln!("SKIPPED: needs root and setpriv to run the mirror as another user");
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    test_pki(pki.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(pki.path(), 0o755);
    mode(&pki.path().join("first.crt"), 0o644);
    mode(&pki.path().join("first.key"), 0o600);
    let config = pki.path().join("oci-cache.toml");
    std::fs::write(&config, tls_config(pki.path(), "first")).unwrap();
    mode(&config, 0o644);
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(oci_cache_bin())
        .args(["serve", "--listen", &listen, "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}");
    let key = pki.path().join("first.key");
    assert!(
        stderr.contains(&format!(
            "permission denied reading the file {}, running as uid 65534",
            key.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("serving") && !stdout.contains("serving"),
        "claimed to serve before failing: {stdout}{stderr}"
    );
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}
