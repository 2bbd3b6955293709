//! A private Docker daemon (Debian's `docker.io`) with its own data root,
//! exec root and socket in a temp dir, configured by a `daemon.json` the test
//! gives it: the real client for `registry-mirrors`, and the engine that
//! builds and runs the container image.
//!
//! `--iptables=false --bridge=none --storage-driver=vfs` make it run inside
//! a container, as root, without touching the host's network; containers it
//! runs use `--network host`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running dockerd, stopped (SIGTERM by PID, so it stops the containerd it
/// started, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Dockerd {
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

impl Dockerd {
    /// Start dockerd with `daemon_json` as its `--config-file`, or say loudly
    /// why not and return `None` (not installed: a failure under `CI=true`;
    /// not root: a skip).
    pub(crate) fn start(test: &str, daemon_json: &Path) -> Option<Dockerd> {
        let installed = ["dockerd", "docker"].iter().all(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !installed || !is_root {
            let msg = format!(
                "{test}: SKIPPED — dockerd {} (run scripts/install-test-deps as root)",
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
            .prefix("e2e-dockerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let socket = d.join("docker.sock");
        let log = d.join("dockerd.log");
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver=vfs"])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--config-file")
            .arg(daemon_json)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut dockerd = Dockerd { child, socket, dir };
        let start = Instant::now();
        while dockerd.docker(&["version"]).is_err() {
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                panic!(
                    "dockerd exited during start-up ({status}):\n{}",
                    dockerd.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not start:\n{}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(dockerd)
    }

    /// Everything dockerd logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `unix://SOCKET`, for `docker -H`.
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `docker -H SOCKET ARGS`; stdout on success, stderr in the error.
    pub(crate) fn docker(&self, args: &[&str]) -> Result<String, String> {
        self.docker_with(args, &[], None)
    }

    /// Like [`Dockerd::docker`] with extra environment and bytes on stdin.
    pub(crate) fn docker_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&Path>,
    ) -> Result<String, String> {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(self.host())
            .args(args)
            .envs(env.iter().copied());
        if let Some(path) = stdin {
            cmd.stdin(
                File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            );
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "docker {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        let mut exited = false;
        while !exited && start.elapsed() < Duration::from_secs(15) {
            exited = matches!(self.child.try_wait(), Ok(Some(_)));
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        unmount_under(self.dir.path());
    }
}

/// dockerd leaves its network namespace mounted in the exec root; the temp
/// dir (a vfs data root of a GiB or more) cannot be removed under a mount.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").arg(point).status();
    }
}
