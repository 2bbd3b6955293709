//! The `oci-cache` binary as the mirror under test.
//!
//! The CLI contract these tests assume:
//! `oci-cache serve --listen 127.0.0.1:PORT --storage-dir DIR
//!  --upstream NAME=URL [--upstream NAME=URL ...] --default-upstream NAME
//!  --tag-ttl DURATION` (DURATION like `1s`, `5m`), or
//! the same with `--config FILE` instead of `--storage-dir` for settings only
//! the file has (the S3 storage backend: a `[storage]` table with
//! `kind = "s3"`, `bucket`, `endpoint`, `region`, `path_style`; credentials
//! from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, ServerProcess};

/// The binary under test: `$OCI_CACHE_BIN` (e.g. a release build) or the one
/// cargo built for this test run.
pub(crate) fn oci_cache_bin() -> PathBuf {
    std::env::var_os("OCI_CACHE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oci-cache")))
}

/// Runs `oci-cache ARGS` to the end and returns its standard output; fails
/// the test, showing both outputs, when the command fails.
pub(crate) fn oci_cache(args: &[&str]) -> String {
    let out = Command::new(oci_cache_bin()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "oci-cache {args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A running `oci-cache serve`, killed on drop; its logs go to `log_path`.
#[derive(Debug)]
pub(crate) struct Mirror {
    server: ServerProcess,
    /// Where its stdout and stderr go.
    log_path: PathBuf,
    _dir: TempDir,
}

impl Mirror {
    /// `oci-cache serve` with `upstreams` (`(name, url)`), `default_upstream`
    /// and a tag TTL, storing on the filesystem in a temp dir.
    pub(crate) fn start_oci_cache(
        upstreams: &[(&str, &str)],
        default_upstream: &str,
        tag_ttl: &str,
    ) -> Mirror {
        let dir = tempdir();
        let storage_dir = dir.path().join("storage");
        let mut args: Vec<String> = vec!["--storage-dir".into(), path_arg(&storage_dir)];
        args.extend(upstream_args(upstreams, default_upstream, tag_ttl));
        Mirror::spawn(dir, &args, &[])
    }

    /// Like [`Mirror::start_oci_cache`] but storage comes from `--config FILE`
    /// (`config_toml`, e.g. an `[storage]` table for S3), with `env` added to
    /// the environment (credentials).
    pub(crate) fn start_oci_cache_with_config(
        config_toml: &str,
        upstreams: &[(&str, &str)],
        default_upstream: &str,
        tag_ttl: &str,
        env: &[(&str, &str)],
    ) -> Mirror {
        let dir = tempdir();
        let config = dir.path().join("oci-cache.toml");
        std::fs::write(&config, config_toml).unwrap();
        let mut args: Vec<String> = vec!["--config".into(), path_arg(&config)];
        args.extend(upstream_args(upstreams, default_upstream, tag_ttl));
        Mirror::spawn(dir, &args, env)
    }

    /// `oci-cache serve` storing in a temp dir, with `args` as given (e.g.
    /// `--upstream`, `--talos-config FILE`, `--containerd-hosts DIR`).
    pub(crate) fn start_oci_cache_args(args: &[String]) -> Mirror {
        let dir = tempdir();
        let mut all: Vec<String> = vec![
            "--storage-dir".into(),
            path_arg(&dir.path().join("storage")),
        ];
        all.extend_from_slice(args);
        Mirror::spawn(dir, &all, &[])
    }

    /// `oci-cache serve` with exactly `args` (storage from them, e.g. a
    /// `--config` naming S3) and `env` added to the environment.
    pub(crate) fn start_oci_cache_args_env(args: &[String], env: &[(&str, &str)]) -> Mirror {
        Mirror::spawn(tempdir(), args, env)
    }

    /// `oci-cache serve` on `ip` (another loopback address, standing for
    /// another host) with exactly `args` and `env`; `{url}` in `args` is
    /// replaced by the replica's own `http://IP:PORT` (for `--advertise-url`).
    pub(crate) fn start_replica(ip: &str, args: &[String], env: &[(&str, &str)]) -> Mirror {
        Mirror::spawn_probing(tempdir(), (ip, free_port()), args, env, "/v2/")
    }

    fn spawn(dir: TempDir, args: &[String], env: &[(&str, &str)]) -> Mirror {
        Mirror::spawn_probing(dir, ("127.0.0.1", free_port()), args, env, "/v2/")
    }

    fn spawn_probing(
        dir: TempDir,
        (ip, port): (&str, u16),
        args: &[String],
        env: &[(&str, &str)],
        probe: &str,
    ) -> Mirror {
        let url = format!("http://{ip}:{port}");
        let log_path = dir.path().join("oci-cache.log");
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(oci_cache_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .args(args.iter().map(|a| a.replace("{url}", &url)))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let server = ServerProcess::spawn_at("oci-cache", cmd, (ip, port), log_path.clone(), probe);
        Mirror {
            server,
            log_path,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn host(&self) -> String {
        self.server.host()
    }

    /// The temp dir the mirror runs in (`storage/` under it with `--storage-dir`).
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Everything the mirror logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits up to `timeout` for the log to contain `needle`; whether it does.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Starts `oci-cache serve` with `args` after `--listen`, in a fresh temp dir
    /// (`dir_file` names files to write there first: `(name, contents)`; `{dir}` in
    /// `args` and contents is replaced by the temp dir).
    pub(crate) fn start_with_args(args: &[&str], dir_files: &[(&str, &str)]) -> Mirror {
        Mirror::start_probing(args, dir_files, "/v2/")
    }

    /// [`Mirror::start_with_args`] for a mirror serving TLS: ready once it
    /// accepts TCP connections (a plain HTTP probe would fail the handshake).
    pub(crate) fn start_tls_with_args(args: &[&str], dir_files: &[(&str, &str)]) -> Mirror {
        Mirror::start_probing(args, dir_files, "")
    }

    /// [`Mirror::start_tls_with_args`] on a given `port` (one another
    /// process was told about, e.g. an ACME CA's challenge port).
    pub(crate) fn start_tls_on(port: u16, args: &[&str], dir_files: &[(&str, &str)]) -> Mirror {
        Mirror::start_probing_on(port, args, dir_files, "")
    }

    fn start_probing(args: &[&str], dir_files: &[(&str, &str)], probe: &str) -> Mirror {
        Mirror::start_probing_on(free_port(), args, dir_files, probe)
    }

    fn start_probing_on(
        port: u16,
        args: &[&str],
        dir_files: &[(&str, &str)],
        probe: &str,
    ) -> Mirror {
        let dir = tempdir();
        let d = path_arg(dir.path());
        for (name, contents) in dir_files {
            std::fs::write(dir.path().join(name), contents.replace("{dir}", &d)).unwrap();
        }
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &d)).collect();
        Mirror::spawn_probing(dir, ("127.0.0.1", port), &args, &[], probe)
    }

    /// A graceful stop (SIGTERM): in-flight requests finish and blob fills
    /// are stored before it exits. Panics if it does not exit within 30 s.
    pub(crate) fn terminate(&mut self) {
        assert!(
            self.server.terminate(std::time::Duration::from_secs(30)),
            "oci-cache did not stop within 30 s of SIGTERM:\n{}",
            self.log()
        );
    }

    /// Sends SIGHUP (what `systemctl reload` does) and waits until the log
    /// has one more line containing `outcome` than before, for up to 10 s;
    /// returns the log lines the reload wrote.
    pub(crate) fn reload(&self, outcome: &str) -> String {
        let before = self.log().len();
        let pid = rustix::process::Pid::from_raw(self.server.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            let new = log.get(before..).unwrap_or_default();
            if new.contains(outcome) {
                return new.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {outcome:?} in the log within 10 s of SIGHUP:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The server's process id.
    #[allow(dead_code)] // Used by benches/compare.rs, not by the tests.
    pub(crate) fn pid(&self) -> u32 {
        self.server.pid()
    }
}

impl Drop for Mirror {
    /// A failing test shows what the mirror logged: the log file goes with
    /// the temp dir.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- oci-cache log (last {} lines) ---", tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn upstream_args(upstreams: &[(&str, &str)], default_upstream: &str, tag_ttl: &str) -> Vec<String> {
    let mut args = Vec::new();
    for (name, url) in upstreams {
        args.push("--upstream".into());
        args.push(format!("{name}={url}"));
    }
    args.extend([
        "--default-upstream".into(),
        default_upstream.into(),
        "--tag-ttl".into(),
        tag_ttl.into(),
    ]);
    args
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("e2e-oci-cache-")
        .tempdir()
        .unwrap()
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}
