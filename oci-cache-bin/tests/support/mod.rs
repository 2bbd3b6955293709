//! Test support for end-to-end tests with real parts, all on 127.0.0.1:
//! Debian's `docker-registry` as the origin (and, in proxy mode, as a stand-in
//! mirror), `skopeo` as the client, images built here with deterministic bytes,
//! and the `oci-cache` binary as the mirror under test.

pub(crate) mod containerd;
pub(crate) mod cut_proxy;
pub(crate) mod dockerd;
pub(crate) mod http;
pub(crate) mod image;
pub(crate) mod mirror;
pub(crate) mod pebble;
pub(crate) mod podman;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod s3;
pub(crate) mod skopeo;
pub(crate) mod token_server;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool ARG` runs and exits 0 (its output dropped): how an
/// installed tool is told from a missing one.
pub(crate) fn answers(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the external tools the e2e tests need are installed.
///
/// Missing tools make a test skip loudly on a developer machine, but fail
/// under `CI=true`: CI installs them (`scripts/install-test-deps`), so their
/// absence there is a broken setup, not a reason to pass.
pub(crate) fn tools_available(test: &str) -> bool {
    these_tools_available(test, &["docker-registry", "skopeo"])
}

/// [`tools_available`] for another set of `tools` (e.g. adding `chromium`).
pub(crate) fn these_tools_available(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| !answers(tool, "--version"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: SKIPPED — missing {missing:?}; run scripts/install-test-deps to install them"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: refusing to skip)");
    }
    eprintln!("\n!!!!!!!! {msg}\n");
    false
}

/// True when every one of `tools` answers `--version` and this process runs
/// as root (the daemons the client tests start need it), else says loudly
/// why the test is skipped: a missing tool fails under `CI=true`, which
/// installs them; not being root is a skip.
pub(crate) fn root_tools_available(test: &str, tools: &[&str]) -> bool {
    let installed = tools.iter().all(|tool| answers(tool, "--version"));
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if installed && is_root {
        return true;
    }
    let msg = format!(
        "{test}: SKIPPED — {} {} (run scripts/install-test-deps as root)",
        tools.join("/"),
        if installed {
            "need root"
        } else {
            "not installed"
        }
    );
    if !installed && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: refusing to skip)");
    }
    eprintln!("\n!!!!!!!! {msg}\n");
    false
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// The listener is dropped before the server binds, so another process could
/// take the port in between; the servers' readiness wait catches that.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A child process serving HTTP on 127.0.0.1, killed (by PID) and reaped on drop.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// Port the server listens on.
    pub(crate) port: u16,
    /// The loopback address it listens on (127.0.0.1 unless started `_at` another).
    ip: String,
    /// What the process is, for messages.
    name: String,
    /// Where its stderr goes, shown when it fails to start.
    pub(crate) stderr_path: PathBuf,
}

impl ServerProcess {
    /// Spawn `cmd` (stdout/stderr already routed by the caller) and wait until
    /// `GET probe_path` gets an HTTP answer on `port`.
    pub(crate) fn spawn(
        name: &str,
        cmd: Command,
        port: u16,
        stderr_path: PathBuf,
        probe_path: &str,
    ) -> ServerProcess {
        ServerProcess::spawn_at(name, cmd, ("127.0.0.1", port), stderr_path, probe_path)
    }

    /// [`ServerProcess::spawn`] for a server on another loopback address
    /// (127.0.0.2 stands for another host).
    pub(crate) fn spawn_at(
        name: &str,
        mut cmd: Command,
        (ip, port): (&str, u16),
        stderr_path: PathBuf,
        probe_path: &str,
    ) -> ServerProcess {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = ServerProcess {
            child,
            port,
            ip: ip.to_owned(),
            name: name.to_owned(),
            stderr_path,
        };
        server.wait_ready(probe_path, Duration::from_secs(30));
        server
    }

    /// `127.0.0.1:PORT` (or the other loopback address it listens on).
    pub(crate) fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Kills the process (by PID) and reaps it; the port then refuses connections.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process the way an operator does (SIGTERM, by PID) and
    /// waits up to `grace` for it to exit, then kills it. Returns whether
    /// it exited by itself.
    pub(crate) fn terminate(&mut self, grace: Duration) -> bool {
        let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) else {
            return false;
        };
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
            return false;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// The process id, for reading its resource use from /proc.
    #[allow(dead_code)] // Used by benches/compare.rs, not by the tests.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, probe_path: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited during start-up ({status}); stderr:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
            // Any HTTP answer means the server is up; what it answers is
            // for the tests to judge. An empty path (TLS servers) probes
            // with a TCP connection only.
            let up = if probe_path.is_empty() {
                std::net::TcpStream::connect(self.host()).is_ok()
            } else {
                http::request(&self.host(), "GET", probe_path, &[]).is_ok()
            };
            if up {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not answer GET {probe_path} on {} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.host(),
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
