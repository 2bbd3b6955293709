//! The reference for warm blob throughput: nginx serving the very file
//! oci-cache stored for the blob, with `sendfile on` — the same bytes from the
//! same page cache, so the only difference is the server. nginx hands the
//! file to the kernel (`sendfile(2)`); oci-cache reads it and writes it
//! through hyper, which cannot sendfile.
//!
//! nginx runs as one process (`master_process off`) from a throwaway
//! configuration in its own temp dir (pid, logs and temp paths there; the
//! system's `/etc/nginx` is never read), on a free port of 127.0.0.1, and is
//! killed by PID when dropped. Without an nginx binary the row says so and
//! the rest of the bench goes on.
//!
//! The two servers are measured in pairs, oci-cache then nginx, each pair
//! back to back, so both runs of a pair see the same load on a shared
//! machine; the row shows every pair's ratio.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::image::Layout;
use crate::support::{free_port, ServerProcess};
use crate::{cpu_seconds, largest_blob, wrk, Table, Wrk, MIB};

/// Where Debian's `nginx-light` puts the binary (often not on a user's PATH).
const NGINX_PATHS: [&str; 2] = ["nginx", "/usr/sbin/nginx"];

/// Pairs of (oci-cache, nginx) warm blob runs.
pub(crate) const PAIRS: usize = 3;

/// An nginx serving one file at [`Nginx::url`]; killed (by PID) when dropped.
#[derive(Debug)]
pub(crate) struct Nginx {
    // Declared before the temp dir so the process stops before its dir goes.
    server: ServerProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx serving `file` (`sendfile on`), or why it cannot.
    pub(crate) fn serve(file: &Path, work: &Path) -> Result<Nginx, String> {
        let binary = NGINX_PATHS
            .iter()
            .copied()
            .find(|bin| crate::support::answers(bin, "-v"))
            .ok_or("nginx not installed (scripts/bench-compare installs nginx-light)")?;
        let (Some(root), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(format!("{} is not a file path", file.display()));
        };
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir_in(work)
            .map_err(|e| format!("temp dir for nginx: {e}"))?;
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), root, port))
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).map_err(|e| format!("nginx stderr: {e}"))?;
        let mut cmd = Command::new(binary);
        // `-e` keeps even the start-up error log out of /var/log/nginx.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(stderr);
        let server = ServerProcess::spawn("nginx", cmd, port, stderr_path, "/");
        let url = format!("http://{}/{}", server.host(), name.to_string_lossy());
        Ok(Nginx {
            server,
            url,
            _dir: dir,
        })
    }

    /// The URL of the file.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// One process, one file root, `sendfile on`, every path in `dir`.
fn config(dir: &Path, root: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
",
        root = root.display()
    )
}

/// The file a filesystem-backed oci-cache stored for blob `digest`
/// (`sha256:<hex>`): the one named `<hex>` under `storage`, of `size` bytes.
pub(crate) fn stored_blob(storage: &Path, digest: &str, size: u64) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    let mut dirs = vec![storage.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
            } else if entry.file_name() == hex && meta.len() == size {
                return Some(path);
            }
        }
    }
    None
}

/// One wrk run and the CPU seconds the server used during it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    wrk: Wrk,
    cpu: f64,
    secs: u64,
}

impl Run {
    /// `secs` seconds of wrk on `url`, charged to the server `pid`.
    fn measure(url: &str, pid: u32, (connections, secs): (u32, u64)) -> Run {
        let before = cpu_seconds(pid);
        let wrk = wrk(url, connections, secs);
        Run {
            wrk,
            cpu: cpu_seconds(pid) - before,
            secs,
        }
    }

    fn mib_s(&self) -> f64 {
        self.wrk.bytes_per_sec / MIB
    }

    /// Server CPU milliseconds per MiB served: moved less than MiB/s by
    /// the other load on a shared machine.
    fn cpu_ms_per_mib(&self) -> f64 {
        self.cpu * 1e3 / (self.mib_s() * self.secs as f64)
    }
}

/// What the nginx rows show: every (oci-cache, nginx) pair, or why there is none.
#[derive(Debug, Clone)]
pub(crate) enum Versus {
    /// The pairs, in run order.
    Pairs(Vec<(Run, Run)>),
    /// Why nginx was not measured.
    Skipped(String),
}

/// [`PAIRS`] pairs of wrk runs (`connections`, `secs` each) on the largest
/// blob of `layout` (pulled as `repo`): oci-cache (process `pid`) at `host`,
/// then nginx serving the file oci-cache stored for it under `storage`.
pub(crate) fn versus(
    (host, pid, repo): (&str, u32, &str),
    layout: &Layout,
    storage: &Path,
    work: &Path,
    wrk_args: (u32, u64),
) -> Versus {
    let digest = largest_blob(layout);
    let size = layout.images[0]
        .blobs()
        .iter()
        .find(|b| b.digest == digest)
        .map_or(0, |b| b.size);
    let blob_url = format!("http://{host}/v2/{repo}/blobs/{digest}");
    let Some(file) = stored_blob(storage, &digest, size) else {
        return Versus::Skipped(format!(
            "no stored file for {digest} under {}",
            storage.display()
        ));
    };
    let nginx = match Nginx::serve(&file, work) {
        Ok(nginx) => nginx,
        Err(why) => return Versus::Skipped(why),
    };
    let nginx_pid = nginx.server.pid();
    Versus::Pairs(
        (0..PAIRS)
            .map(|_| {
                (
                    Run::measure(&blob_url, pid, wrk_args),
                    Run::measure(nginx.url(), nginx_pid, wrk_args),
                )
            })
            .collect(),
    )
}

impl Versus {
    /// Adds the rows (MiB/s, and server CPU per MiB; every pair) to `table`.
    pub(crate) fn add_to(&self, table: &mut Table) {
        let what = format!(
            "warm blob vs nginx sendfile, same file ({PAIRS} pairs back to back; origin column: nginx)"
        );
        let pairs = match self {
            Versus::Skipped(why) => {
                let dash = || "—".to_owned();
                return table.row(
                    &format!("{what}: MiB/s"),
                    why.clone(),
                    dash(),
                    dash(),
                    dash(),
                    "≥ 1.0×",
                );
            }
            Versus::Pairs(pairs) => pairs,
        };
        let each =
            |f: &dyn Fn(&(Run, Run)) -> String| pairs.iter().map(f).collect::<Vec<_>>().join(" / ");
        table.row(
            &format!("{what}: MiB/s"),
            each(&|p| format!("{:.0}", p.1.mib_s())),
            "—".into(),
            each(&|p| format!("{:.0}", p.0.mib_s())),
            each(&|p| format!("{:.2}×", p.0.mib_s() / p.1.mib_s())),
            "≥ 1.0×",
        );
        table.row(
            &format!("{what}: server CPU per MiB"),
            each(&|p| format!("{:.2} ms", p.1.cpu_ms_per_mib())),
            "—".into(),
            each(&|p| format!("{:.2} ms", p.0.cpu_ms_per_mib())),
            each(&|p| format!("{:.2}×", p.0.cpu_ms_per_mib() / p.1.cpu_ms_per_mib())),
            "",
        );
    }
}
