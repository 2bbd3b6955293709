//! Debian's `pebble`, the ACME test CA (Let's Encrypt's), with real
//! challenge validation: its validation authority connects to the
//! `httpPort` / `tlsPort` it is configured with on the name being
//! validated (`localhost` here), i.e. to the mirror under test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, these_tools_available, tools_available, ServerProcess};

/// True when pebble (which has no `--version`: installed means it starts),
/// skopeo and docker-registry are installed; else skips or fails the way
/// [`these_tools_available`] does.
pub(crate) fn available(test: &str) -> bool {
    let installed = Command::new("pebble")
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !installed {
        // Reports pebble missing (and fails under CI=true).
        return these_tools_available(test, &["pebble"]);
    }
    tools_available(test)
}

/// A running pebble, killed on drop.
#[derive(Debug)]
pub(crate) struct Pebble {
    server: ServerProcess,
    management_port: u16,
    log_path: PathBuf,
    /// The CA certificate of pebble's own HTTPS (`ca.crt` of the PKI given).
    pub(crate) https_ca: PathBuf,
}

impl Pebble {
    /// Starts pebble serving HTTPS with `pki`'s `first.crt`/`first.key`
    /// (an IP:127.0.0.1 certificate signed by `pki/ca.crt`), validating
    /// HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub(crate) fn start(pki: &Path, http_port: u16, tls_port: u16) -> Pebble {
        let (port, management_port) = (free_port(), free_port());
        let config = pki.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": pki.join("first.crt"),
                "privateKey": pki.join("first.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }})
            .to_string(),
        )
        .unwrap();
        let log_path = pki.join("pebble.log");
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config)
            // Validation stays real; only its random delay, nonce
            // rejections and authorization reuse are off, so each order
            // validates its challenge and the test is deterministic.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let server = ServerProcess::spawn("pebble", cmd, port, log_path.clone(), "");
        Pebble {
            server,
            management_port,
            log_path,
            https_ca: pki.join("ca.crt"),
        }
    }

    /// The ACME directory URL.
    pub(crate) fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.server.port)
    }

    /// The root certificate pebble issues under (PEM), from its management
    /// API: what a client trusts to verify the issued certificates.
    pub(crate) fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let out = Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(&self.https_ca)
            .arg(&url)
            .output()
            .expect("curl is needed; run scripts/install-test-deps");
        assert!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// How many orders pebble has created so far.
    pub(crate) fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// Everything pebble logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Waits up to `timeout` for `text` to appear in what `log` returns.
pub(crate) fn wait_for_log(log: impl Fn() -> String, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if log().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
