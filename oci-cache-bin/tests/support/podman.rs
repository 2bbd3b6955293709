//! podman (Debian's) as a client of a generated `registries.conf`: rootful,
//! with its own storage root (vfs) and run root in a temp dir, and
//! `CONTAINERS_REGISTRIES_CONF` pointing at the file under test.

use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// A podman storage of its own; removed with the temp dir.
#[derive(Debug)]
pub(crate) struct Podman {
    dir: TempDir,
}

impl Podman {
    /// A fresh storage, or `None` (said loudly) when podman cannot run here:
    /// not installed (a failure under `CI=true`) or not root.
    pub(crate) fn new(test: &str) -> Option<Podman> {
        let installed = Command::new("podman")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !installed || !is_root {
            let msg = format!(
                "{test}: SKIPPED — podman {} (run scripts/install-test-deps as root)",
                if installed {
                    "needs root"
                } else {
                    "not installed"
                }
            );
            if !installed && std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: refusing to skip)");
            }
            eprintln!("\n!!!!!!!! {msg}\n");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("e2e-podman-")
            .tempdir()
            .unwrap();
        Some(Podman { dir })
    }

    /// Runs `podman ARGS` with `registries_conf` as the only registries
    /// configuration; stdout on success, stderr in the error.
    pub(crate) fn run(&self, registries_conf: &Path, args: &[&str]) -> Result<String, String> {
        let d = self.dir.path();
        let out = Command::new("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", registries_conf)
            .env("HOME", d)
            .output()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "podman {args:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}
