//! Issue 11: the mirror's own trust boundary — htpasswd client
//! authentication with public and authenticated upstreams, and the start-up
//! warning for credentials served to anyone. docker-registry origins, the
//! `oci-cache` binary and skopeo, all on 127.0.0.1.

use std::path::Path;
use std::process::Command;

use super::fixtures::small_image;
use super::resilience::seed_storage;
use crate::support::http;
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{free_port, skopeo, tools_available};

const ORIGIN_PASSWORD: &str = "origin-pw-7Hq2Lm";
const CLIENT_PASSWORD: &str = "client-pw-R4vN8s";

/// `user:bcrypt` from `htpasswd -B`, written to `path`.
fn htpasswd(path: &Path, user: &str, password: &str) {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (apache2-utils) is needed; run scripts/install-test-deps");
    assert!(out.status.success());
    std::fs::write(path, &out.stdout).unwrap();
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn htpasswd_guards_private_upstreams_and_their_digests() {
    if !tools_available("htpasswd_guards_private_upstreams_and_their_digests") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let public_app = small_image(&work.path().join("pub"), 1101);
    let private_app = small_image(&work.path().join("priv"), 1102);

    let public = Origin::start();
    skopeo::push(&public_app, &public.host(), "e2e/app:v1");
    let private_root = work.path().join("private-data");
    seed_storage(&private_root, &private_app, "e2e/secret:v1");
    let origin_users = work.path().join("origin-htpasswd");
    htpasswd(&origin_users, "mirror", ORIGIN_PASSWORD);
    let private = Origin::start_on(
        &private_root,
        &format!(
            "auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
            origin_users.display()
        ),
    );
    std::fs::write(
        work.path().join("origin-password"),
        format!("{ORIGIN_PASSWORD}\n"),
    )
    .unwrap();
    let clients = work.path().join("clients");
    htpasswd(&clients, "node", CLIENT_PASSWORD);

    let config = format!(
        "[auth]\nhtpasswd = \"{clients}\"\nrealm = \"e2e-mirror\"\n\n\
         [[upstream]]\nname = \"public.test\"\nurl = \"{public}\"\naccess = \"public\"\n\n\
         [[upstream]]\nname = \"plain.test\"\nurl = \"{public}\"\n\n\
         [[upstream]]\nname = \"private.test\"\nurl = \"{private}\"\n\
         credentials = {{ username = \"mirror\", password_file = \"{pwfile}\" }}\n",
        clients = clients.display(),
        public = public.url(),
        private = private.url(),
        pwfile = work.path().join("origin-password").display(),
    );
    let mirror = Mirror::start_with_args(
        &[
            "--config",
            "{dir}/oci-cache.toml",
            "--storage-dir",
            "{dir}/storage",
            "--default-upstream",
            "public.test",
        ],
        &[("oci-cache.toml", &config)],
    );
    let host = mirror.host();
    let creds = format!("node:{CLIENT_PASSWORD}");

    // The private upstream needs the client's credentials…
    let got = skopeo::copy_with(
        &format!("{host}/private.test/e2e/secret:v1"),
        &work.path().join("c1"),
        &["--src-tls-verify=false", "--src-creds", &creds],
    )
    .unwrap();
    assert_eq!(got.digest, private_app.digest);
    let err = skopeo::copy(
        &format!("{host}/private.test/e2e/secret:v1"),
        &work.path().join("c2"),
    )
    .unwrap_err();
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let wrong = skopeo::copy_with(
        &format!("{host}/private.test/e2e/secret:v1"),
        &work.path().join("c3"),
        &["--src-tls-verify=false", "--src-creds", "node:wrong"],
    )
    .unwrap_err();
    assert!(
        wrong.contains("401") || wrong.to_lowercase().contains("unauthorized"),
        "{wrong}"
    );

    // …the public one does not.
    let got = skopeo::copy(
        &format!("{host}/public.test/e2e/app:v1"),
        &work.path().join("c4"),
    )
    .unwrap();
    assert_eq!(got.digest, public_app.digest);

    // An upstream without credentials is protected too unless set public
    // (issue 22), as registry:2 protects everything behind its htpasswd.
    let plain = skopeo::copy(
        &format!("{host}/plain.test/e2e/app:v1"),
        &work.path().join("c5"),
    )
    .unwrap_err();
    assert!(
        plain.contains("401") || plain.to_lowercase().contains("unauthorized"),
        "{plain}"
    );
    let got = skopeo::copy_with(
        &format!("{host}/plain.test/e2e/app:v1"),
        &work.path().join("c6"),
        &["--src-tls-verify=false", "--src-creds", &creds],
    )
    .unwrap();
    assert_eq!(got.digest, public_app.digest);

    // A cached private layer is not public because its digest is known.
    let layer = &private_app.images[0].layers[0].digest;
    let path = format!("/v2/public.test/e2e/app/blobs/{layer}");
    let anonymous = http::request(&host, "GET", &path, &[]).unwrap();
    assert_eq!(
        anonymous.status, 404,
        "a private blob leaked through a public path"
    );
    let direct = http::request(
        &host,
        "GET",
        &format!("/v2/private.test/e2e/secret/blobs/{layer}"),
        &[],
    )
    .unwrap();
    assert_eq!(direct.status, 401);
    assert!(direct
        .header("www-authenticate")
        .is_some_and(|v| v.contains("Basic realm=\"e2e-mirror\"")));
    let authorized = basic("node", CLIENT_PASSWORD);
    let allowed = http::request(&host, "GET", &path, &[("authorization", &authorized)]).unwrap();
    assert_eq!(allowed.status, 200);
    assert_eq!(http::sha256_digest(&allowed.body), *layer);
    // A public layer stays readable by digest anonymously.
    let public_layer = &public_app.images[0].layers[0].digest;
    let open = http::request(
        &host,
        "GET",
        &format!("/v2/public.test/e2e/app/blobs/{public_layer}"),
        &[],
    )
    .unwrap();
    assert_eq!(open.status, 200);

    // Failed logins from one address are rate-limited.
    let bad = basic("node", "guess");
    let statuses: Vec<u16> = (0..12)
        .map(|_| {
            http::request(&host, "GET", "/v2/", &[("authorization", &bad)])
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10..], [429, 429]);

    let log = mirror.log();
    for secret in [ORIGIN_PASSWORD, CLIENT_PASSWORD] {
        assert!(!log.contains(secret), "a password reached the log");
    }
    assert!(!log.contains("client authentication is off"), "{log}");
    // One warning per public upstream, none for the protected ones.
    assert_eq!(
        log.matches("upstream public.test is public").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("plain.test is public"), "{log}");
    assert!(!log.contains("private.test is public"), "{log}");
}

#[test]
fn credentialed_upstreams_without_client_auth_are_warned_about() {
    if !tools_available("credentialed_upstreams_without_client_auth_are_warned_about") {
        return;
    }
    std::env::set_var("E2E_TRUST_ORIGIN_PASSWORD", ORIGIN_PASSWORD);
    let config = "[[upstream]]\nname = \"private.test\"\nurl = \"http://127.0.0.1:9\"\n\
         credentials = { username = \"mirror\", password_env = \"E2E_TRUST_ORIGIN_PASSWORD\" }\n\n\
         [[upstream]]\nname = \"public.test\"\nurl = \"http://127.0.0.1:9\"\n";
    let mirror = Mirror::start_with_args(
        &[
            "--config",
            "{dir}/oci-cache.toml",
            "--storage-dir",
            "{dir}/storage",
            "--default-upstream",
            "public.test",
        ],
        &[("oci-cache.toml", config)],
    );
    let log = mirror.log();
    assert!(
        log.contains("upstream private.test has credentials but client authentication is off"),
        "{log}"
    );
    assert!(
        !log.contains("upstream public.test has credentials"),
        "{log}"
    );
    assert!(!log.contains(ORIGIN_PASSWORD));
}

/// Runs `openssl` with `args` in `dir`, panicking with its stderr on failure.
pub(super) fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed; run scripts/install-test-deps");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A test CA (`ca.crt`), two server certificates for 127.0.0.1 signed by
/// it, `first.{crt,key}` and `second.{crt,key}` (CN first / second), and a
/// client certificate `client.{crt,key}`.
pub(super) fn test_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=oci-cache e2e CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["first", "second", "client"] {
        let subject = format!("/CN={name}");
        let ext = if name == "client" {
            "client.ext"
        } else {
            "san.ext"
        };
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut req = vec!["req", "-subj", &subject, "-keyout", &key, "-out", &csr];
        req.extend(ec);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &crt,
            ],
        );
    }
}

/// Replaces `dest` with `src` in one rename, as a secret volume update does.
fn replace(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// The subject and ALPN protocol `openssl s_client` sees on `host`.
pub(super) fn handshake(dir: &Path, host: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            host,
            "-CAfile",
            "ca.crt",
            "-alpn",
            "h2,http/1.1",
        ])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn skopeo_pulls_over_tls_with_credentials_through_a_certificate_rotation() {
    if !tools_available("skopeo_pulls_over_tls_with_credentials_through_a_certificate_rotation") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    test_pki(&pki);
    // skopeo reads CA certificates from *.crt files of --src-cert-dir.
    let certs = work.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(pki.join("ca.crt"), certs.join("ca.crt")).unwrap();
    let serving = work.path().join("serving");
    std::fs::create_dir_all(&serving).unwrap();
    replace(&pki.join("first.crt"), &serving.join("tls.crt"));
    replace(&pki.join("first.key"), &serving.join("tls.key"));

    let app = crate::support::image::build_image(
        &work.path().join("app"),
        "v1",
        &crate::support::image::ImageSpec::new(1103, 6, 6 << 20),
    );
    let origin = Origin::start();
    skopeo::push(&app, &origin.host(), "e2e/app:v1");
    let clients = work.path().join("clients");
    htpasswd(&clients, "node", CLIENT_PASSWORD);
    let config = format!(
        "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[auth]\nhtpasswd = \"{clients}\"\n\n\
         [[upstream]]\nname = \"origin.test\"\nurl = \"{origin}\"\naccess = \"authenticated\"\n",
        cert = serving.join("tls.crt").display(),
        key = serving.join("tls.key").display(),
        clients = clients.display(),
        origin = origin.url(),
    );
    let mirror = Mirror::start_tls_with_args(
        &[
            "--config",
            "{dir}/oci-cache.toml",
            "--storage-dir",
            "{dir}/storage",
            "--default-upstream",
            "origin.test",
        ],
        &[("oci-cache.toml", &config)],
    );
    let host = mirror.host();
    let first = handshake(&pki, &host);
    assert!(
        first.contains("CN=first") || first.contains("CN = first"),
        "{first}"
    );
    assert!(first.contains("ALPN protocol: h2"), "{first}");

    let cert_dir = certs.display().to_string();
    let creds = format!("node:{CLIENT_PASSWORD}");
    let image = format!("{host}/e2e/app:v1");
    let anonymous = skopeo::copy_with(
        &image,
        &work.path().join("c0"),
        &["--src-cert-dir", &cert_dir],
    )
    .unwrap_err();
    assert!(
        anonymous.contains("401") || anonymous.to_lowercase().contains("unauthorized"),
        "{anonymous}"
    );

    // Rotate the certificate back and forth while the pull runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotator = {
        let (done, pki, serving) = (done.clone(), pki.clone(), serving.clone());
        std::thread::spawn(move || {
            let mut rotations = 0;
            for name in ["second", "first"].iter().cycle() {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                replace(&pki.join(format!("{name}.key")), &serving.join("tls.key"));
                replace(&pki.join(format!("{name}.crt")), &serving.join("tls.crt"));
                rotations += 1;
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            rotations
        })
    };
    let got = skopeo::copy_with(
        &image,
        &work.path().join("c1"),
        &["--src-cert-dir", &cert_dir, "--src-creds", &creds],
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let rotations = rotator.join().unwrap();
    assert_eq!(got.unwrap().digest, app.digest);
    assert!(rotations >= 1);

    // A connection opened with the first certificate keeps working after the
    // server switched to the second one; new handshakes get the second.
    replace(&pki.join("first.key"), &serving.join("tls.key"));
    replace(&pki.join("first.crt"), &serving.join("tls.crt"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut open = KeptConnection::open(&pki, &host);
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\n\r\n",
        basic("node", CLIENT_PASSWORD)
    );
    open.send(&request);
    open.expect_status("HTTP/1.1 200");
    replace(&pki.join("second.key"), &serving.join("tls.key"));
    replace(&pki.join("second.crt"), &serving.join("tls.crt"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = handshake(&pki, &host);
    assert!(
        second.contains("CN=second") || second.contains("CN = second"),
        "{second}"
    );
    assert!(mirror.log().contains("reloaded the TLS certificate"));
    open.send(&request);
    open.expect_status("HTTP/1.1 200");
}

/// An `openssl s_client` connection kept open across requests (HTTP/1.1).
struct KeptConnection {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl KeptConnection {
    fn open(pki: &Path, host: &str) -> KeptConnection {
        KeptConnection::open_with(pki, host, &[])
    }

    /// With extra `s_client` arguments (`-cert`, `-key`).
    fn open_with(pki: &Path, host: &str, extra: &[&str]) -> KeptConnection {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new("openssl")
            .args([
                "s_client", "-quiet", "-connect", host, "-CAfile", "ca.crt", "-alpn", "http/1.1",
            ])
            .args(extra)
            .current_dir(pki)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        KeptConnection { child, lines }
    }

    fn send(&mut self, request: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(request.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The status line of the next response, `None` when the connection closed.
    fn status(&self) -> Option<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("HTTP/1.1 ") => return Some(line),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(e) => panic!("no answer on the kept connection: {e}"),
            }
        }
        None
    }

    fn expect_status(&self, status: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                // A body without a newline ends up before the next status line.
                Ok(line) if line.contains("HTTP/1.1 ") => {
                    assert!(line.contains(status), "{line}");
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("no {status} on the kept connection: {e}"),
            }
        }
        panic!("no {status} on the kept connection within 10 s");
    }
}

impl Drop for KeptConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_client_ca_makes_clients_present_a_certificate() {
    if !tools_available("a_client_ca_makes_clients_present_a_certificate") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    test_pki(&pki);
    let metrics = format!("127.0.0.1:{}", free_port());
    let tls = [
        ("OCI_CACHE_TLS_CERT", pki.join("first.crt")),
        ("OCI_CACHE_TLS_KEY", pki.join("first.key")),
        ("OCI_CACHE_TLS_CLIENT_CA", pki.join("ca.crt")),
    ];
    let mirror = Mirror::start_tls_with_args(
        &[
            "--storage-dir",
            "{dir}/storage",
            "--upstream",
            "origin.test=http://127.0.0.1:9",
            "--default-upstream",
            "origin.test",
            "--metrics-listen",
            &metrics,
            "--tls-cert",
            &tls[0].1.display().to_string(),
            "--tls-key",
            &tls[1].1.display().to_string(),
            "--tls-client-ca",
            &tls[2].1.display().to_string(),
        ],
        &[],
    );
    let host = mirror.host();
    // `healthcheck` has no client certificate: it asks the metrics
    // listener, and without one says what to set.
    let healthcheck = |metrics: Option<&str>| {
        let mut command = Command::new(crate::support::mirror::oci_cache_bin());
        command
            .arg("healthcheck")
            .env("OCI_CACHE_LISTEN", &host)
            .envs(tls.iter().map(|(k, v)| (k, v)));
        if let Some(metrics) = metrics {
            command.env("OCI_CACHE_METRICS_LISTEN", metrics);
        }
        command.output().unwrap()
    };
    let healthy = healthcheck(Some(&metrics));
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let told = healthcheck(None);
    assert!(!told.status.success());
    assert!(
        String::from_utf8_lossy(&told.stderr).contains("set metrics_listen"),
        "{}",
        String::from_utf8_lossy(&told.stderr)
    );
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut with_cert =
        KeptConnection::open_with(&pki, &host, &["-cert", "client.crt", "-key", "client.key"]);
    with_cert.send(&request);
    with_cert.expect_status("HTTP/1.1 200");
    let mut without = KeptConnection::open(&pki, &host);
    without.send(&request);
    assert_eq!(
        without.status(),
        None,
        "served a client without a certificate"
    );
    // A certificate from another CA is refused as well.
    let mut other = KeptConnection::open_with(&pki, &host, &["-cert", "ca.crt", "-key", "ca.key"]);
    other.send(&request);
    assert_eq!(
        other.status(),
        None,
        "served a client with a self-signed certificate"
    );
}

fn check_config(config: &Path) -> String {
    crate::support::mirror::oci_cache(&["check-config", &config.display().to_string()])
}

#[test]
fn check_config_shows_access_and_credentials_never_passwords() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("robot"), format!("{ORIGIN_PASSWORD}\n")).unwrap();
    let upstreams = format!(
        "default_upstream = \"public.test\"\n\n[[upstream]]\nname = \"private.test\"\nurl = \"https://private.test\"\n\
         credentials = {{ username = \"robot\", password_file = \"{}\" }}\n\n\
         [[upstream]]\nname = \"public.test\"\nurl = \"https://public.test\"\n\
         credentials = {{ username = \"anon\", password = \"{CLIENT_PASSWORD}\" }}\n",
        dir.path().join("robot").display()
    );
    let open = dir.path().join("open.toml");
    std::fs::write(&open, &upstreams).unwrap();
    let out = check_config(&open);
    assert!(out.contains("client auth: off"), "{out}");
    assert!(out.contains("tls: off"), "{out}");
    assert!(
        out.contains("upstream private.test: access public; credentials: robot (password <redacted>) — WARNING"),
        "{out}"
    );

    let guarded = dir.path().join("guarded.toml");
    std::fs::write(
        &guarded,
        format!(
            "{}access = \"public\"\n\n\
             [tls]\ncert = \"/etc/oci-cache/tls.crt\"\nkey = \"/etc/oci-cache/tls.key\"\n\n\
             [auth]\nhtpasswd = \"/etc/oci-cache/htpasswd\"\n",
            upstreams
        ),
    )
    .unwrap();
    let out = check_config(&guarded);
    assert!(
        out.contains("client auth: htpasswd /etc/oci-cache/htpasswd"),
        "{out}"
    );
    assert!(
        out.contains("tls: cert /etc/oci-cache/tls.crt key /etc/oci-cache/tls.key"),
        "{out}"
    );
    assert!(
        out.contains("upstream private.test: access authenticated; credentials: robot"),
        "{out}"
    );
    assert!(
        out.contains("upstream public.test: access public; credentials: anon"),
        "{out}"
    );
    assert!(!out.contains("WARNING"), "{out}");
    for secret in [ORIGIN_PASSWORD, CLIENT_PASSWORD] {
        assert!(
            !out.contains(secret),
            "check-config printed a password: {out}"
        );
    }
}

#[test]
fn credentials_reach_a_token_server_on_another_host_only_when_listed() {
    if !tools_available("credentials_reach_a_token_server_on_another_host_only_when_listed") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 1104);
    let root = work.path().join("origin-data");
    seed_storage(&root, &app, "e2e/app:v1");
    // The registry on 127.0.0.1 sends clients to a token server on 127.0.0.2.
    let tokens = crate::support::token_server::TokenServer::start_on(
        "127.0.0.2",
        work.path(),
        "e2e",
        ORIGIN_PASSWORD,
        300,
        None,
    );
    let origin = Origin::start_on(&root, &tokens.registry_auth_config());
    let upstream = |extra: &str| {
        format!(
            "default_upstream = \"origin.test\"\n[[upstream]]\nname = \"origin.test\"\nurl = \"{}\"\n\
             credentials = {{ username = \"e2e\", password = \"{ORIGIN_PASSWORD}\" }}\n{extra}",
            origin.url()
        )
    };
    let args = [
        "--config",
        "{dir}/oci-cache.toml",
        "--storage-dir",
        "{dir}/storage",
    ];

    let bound = Mirror::start_with_args(&args, &[("oci-cache.toml", &upstream(""))]);
    let err = skopeo::copy(
        &format!("{}/e2e/app:v1", bound.host()),
        &work.path().join("c1"),
    )
    .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(
        tokens.issued() + tokens.refused(),
        0,
        "the token server on another host was contacted"
    );
    assert!(
        bound
            .log()
            .contains("refused an upstream realm or redirect"),
        "{}",
        bound.log()
    );

    let listed = Mirror::start_with_args(
        &args,
        &[(
            "oci-cache.toml",
            &upstream("token_realms = [\"127.0.0.2\"]\n"),
        )],
    );
    let got = skopeo::copy(
        &format!("{}/e2e/app:v1", listed.host()),
        &work.path().join("c2"),
    )
    .unwrap();
    assert_eq!(got.digest, app.digest);
    assert!(tokens.issued() >= 1);
    assert_eq!(tokens.refused(), 0);
}
