//! A private containerd (Debian's, 1.6) with its own root, state and socket in
//! a temp dir, driven by `ctr`: the real client for the `ns` routing mode.
//!
//! `ctr content fetch --hosts-dir DIR` reads `DIR/<registry>/hosts.toml` the
//! way the CRI plugin reads `config_path`, so a mirror entry there makes
//! containerd send `GET /v2/<repo>/manifests/<tag>?ns=<registry>` to the
//! mirror. Fetching content needs no snapshotter, so this runs in a container.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running containerd, killed (by PID) on drop.
#[derive(Debug)]
pub(crate) struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

/// What `ctr` fetched for one reference.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// Digest the reference resolved to.
    pub(crate) digest: String,
    /// Every digest in containerd's content store afterwards, sorted.
    pub(crate) content: Vec<String>,
}

impl Containerd {
    /// Start containerd, or say loudly why not and return `None`: it needs
    /// root; without containerd installed that is a failure under `CI=true`.
    pub(crate) fn start(test: &str) -> Option<Containerd> {
        if !super::root_tools_available(test, &["containerd", "ctr"]) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("e2e-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        // Everything containerd writes stays in the temp dir; the CRI plugin
        // (which wants a network and cgroups) is off.
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = d.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let ctrd = Containerd { child, socket, dir };
        let start = Instant::now();
        while ctrd.ctr(&["version"]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(ctrd)
    }

    /// The socket, for `ctr --address` or `CONTAINERD_ADDRESS`.
    pub(crate) fn address(&self) -> &std::path::Path {
        &self.socket
    }

    /// Runs `ctr --address SOCKET ARGS` in namespace `namespace`.
    pub(crate) fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--namespace", namespace];
        all.extend_from_slice(args);
        self.ctr_raw(&all)
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        self.ctr_in("e2e", args)
    }

    fn ctr_raw(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {args:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Fetch `registry/repo:tag` (linux/amd64) with `mirror` (`127.0.0.1:PORT`)
    /// as the only host in `registry`'s hosts.toml. The `server` there is a
    /// closed port, so a failing mirror cannot be papered over by containerd
    /// falling back to the registry itself.
    pub(crate) fn fetch_via_mirror(
        &self,
        mirror: &str,
        registry: &str,
        repo_tag: &str,
    ) -> Result<Fetched, String> {
        let hosts_dir = self.dir.path().join("hosts");
        let host_dir = hosts_dir.join(registry);
        std::fs::create_dir_all(&host_dir).unwrap();
        let closed = super::free_port();
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:{closed}\"\n\n\
                 [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
        self.fetch_with_hosts_dir(&hosts_dir, &format!("{registry}/{repo_tag}"))
    }

    /// Fetch `reference` (linux/amd64) with `hosts_dir` as the `certs.d`
    /// tree, as the CRI plugin's `config_path` would use it.
    pub(crate) fn fetch_with_hosts_dir(
        &self,
        hosts_dir: &std::path::Path,
        reference: &str,
    ) -> Result<Fetched, String> {
        self.ctr(&[
            "content",
            "fetch",
            "--hosts-dir",
            &hosts_dir.display().to_string(),
            "--platform",
            "linux/amd64",
            reference,
        ])?;
        // `ctr images ls`: REF TYPE DIGEST SIZE PLATFORMS LABELS.
        let images = self.ctr(&["images", "ls"])?;
        let digest = images
            .lines()
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&reference)).then(|| cols.get(2).map(|d| d.to_string()))
            })
            .flatten()
            .ok_or_else(|| format!("{reference} not in ctr images ls:\n{images}"))?;
        let mut content: Vec<String> = self
            .ctr(&["content", "ls", "-q"])?
            .lines()
            .map(str::to_owned)
            .collect();
        content.sort();
        Ok(Fetched { digest, content })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
