//! Issue 25 item 3: the mirror serves its own client configuration at
//! `GET /client-config/KIND`, made from the upstreams and listeners it
//! really runs, byte for byte what `oci-cache client-config KIND` prints
//! for the same configuration; `client-config KIND --from URL` fetches it.

use std::path::Path;
use std::process::Command;

use crate::support::http::request;
use crate::support::mirror::{oci_cache, oci_cache_bin};
use crate::support::{free_port, ServerProcess};

/// `oci-cache serve --config CONFIG` on the config's own listeners.
fn serve(dir: &Path, config: &Path, first_port: u16) -> ServerProcess {
    let log = dir.join("oci-cache.log");
    let mut cmd = Command::new(oci_cache_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--storage-dir")
        .arg(dir.join("storage"))
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("oci-cache.err")).unwrap());
    ServerProcess::spawn("oci-cache", cmd, first_port, log, "/v2/")
}

fn get(host: &str, path: &str) -> (u16, String) {
    let response = request(host, "GET", path, &[]).unwrap();
    (response.status, String::from_utf8(response.body).unwrap())
}

#[test]
fn the_mirror_serves_what_client_config_prints_per_listener() {
    let work = tempfile::tempdir().unwrap();
    let (hub_port, b_port) = (free_port(), free_port());
    let config = work.path().join("oci-cache.toml");
    std::fs::write(
        &config,
        format!(
            "default_upstream = \"docker.io\"\n\n\
             [[listener]]\naddr = \"127.0.0.1:{hub_port}\"\n\n\
             [[listener]]\naddr = \"127.0.0.1:{b_port}\"\ndefault_upstream = \"b.test\"\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n\n\
             [[upstream]]\nname = \"b.test\"\nurl = \"http://127.0.0.1:10\"\n"
        ),
    )
    .unwrap();
    let _server = serve(work.path(), &config, hub_port);
    super::registry2::wait_listening(&format!("127.0.0.1:{b_port}"));
    let hub = format!("127.0.0.1:{hub_port}");
    let b = format!("127.0.0.1:{b_port}");
    let config_arg = config.display().to_string();

    for kind in [
        "containerd",
        "talos",
        "docker",
        "podman",
        "buildkit",
        "kind",
        "k3s",
    ] {
        let mirror = "http://10.5.0.1:5000";
        let printed = oci_cache(&[
            "client-config",
            kind,
            "--mirror",
            mirror,
            "--config",
            &config_arg,
        ]);
        let (status, body) = get(&hub, &format!("/client-config/{kind}?mirror={mirror}"));
        assert_eq!(status, 200, "{kind}: {body}");
        assert_eq!(body, printed, "{kind}");
        // --from fetches the same text from the running mirror.
        let fetched = oci_cache(&[
            "client-config",
            kind,
            "--from",
            &format!("http://{hub}"),
            "--mirror",
            mirror,
        ]);
        assert_eq!(fetched, printed, "{kind} --from");
    }

    // Without mirror=, the request's own origin.
    let (status, body) = get(&hub, "/client-config/k3s");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"http://{hub}\"")), "{body}");

    // The Docker daemon names no registry: on the b.test listener the
    // mirror would answer it with b.test's images, so it is refused there.
    let (status, body) = get(&b, "/client-config/docker?mirror=http://10.5.0.1:5001");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("default upstream must be docker.io"),
        "{body}"
    );
    let (status, _) = get(&b, "/client-config/containerd");
    assert_eq!(status, 200);

    // Unknown kinds and mirror URLs that are not a bare origin.
    let (status, body) = get(&hub, "/client-config/nerdctl");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("containerd, talos, docker"), "{body}");
    for bad in [
        "http://m:5000%0D%0AX-Evil:%201",
        "http://m:5000%22%0A%5Bhost.%22http://evil%22%5D",
        "http://m:5000/v2/docker.io",
        "ftp://m",
        "http://u:p@m",
    ] {
        let (status, body) = get(&hub, &format!("/client-config/talos?mirror={bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"errors\""), "{body}");
        assert!(!body.contains("evil\"]"), "{body}");
    }
    let response = request(&hub, "POST", "/client-config/talos", &[]).unwrap();
    assert_eq!(response.status, 405);
}

#[test]
fn the_served_client_config_needs_credentials_when_clients_do() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let htpasswd = work.path().join("clients");
    let out = Command::new("htpasswd")
        .args(["-B", "-b", "-c"])
        .arg(&htpasswd)
        .args(["node", "node-pw-1"])
        .output()
        .expect("htpasswd (apache2-utils) is needed; run scripts/install-test-deps");
    assert!(out.status.success());
    let config = work.path().join("oci-cache.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n\n[auth]\nhtpasswd = \"{}\"\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let _server = serve(work.path(), &config, port);
    let host = format!("127.0.0.1:{port}");
    let response = request(&host, "GET", "/client-config/containerd", &[]).unwrap();
    assert_eq!(response.status, 401);
    // base64("node:node-pw-1")
    let response = request(
        &host,
        "GET",
        "/client-config/containerd",
        &[("Authorization", "Basic bm9kZTpub2RlLXB3LTE=")],
    )
    .unwrap();
    assert_eq!(response.status, 200);
    let out = Command::new(oci_cache_bin())
        .args([
            "client-config",
            "containerd",
            "--from",
            &format!("http://{host}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires credentials"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
