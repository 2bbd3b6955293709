//! The end-to-end probe: each runtime's own client pulls
//! `UPSTREAM/oci-cache-doctor/probe:NONCE`, an image only the mirror serves
//! (it answers that repository from memory and never forwards it), the mirror
//! is asked whether it saw the nonce (`GET /doctor/probe/NONCE`), and the
//! image is removed from the node again.
//!
//! The clients are the ones on this machine, reaching their daemons as they
//! do by default or by their own variables (`DOCKER_HOST`,
//! `CONTAINERD_ADDRESS`, `CONTAINERS_REGISTRIES_CONF`, …); k3s and RKE2 are
//! probed with `ctr` on their own containerd socket (`k3s ctr` is that
//! same client), when the socket exists under the root.

use std::io::Read as _;
use std::process::Command;

use serde::Serialize;

use super::{Node, RuntimeReport};
use crate::client_config::MirrorUrl;

/// The repository the mirror reserves for the probe.
const PROBE_REPOSITORY: &str = "oci-cache-doctor/probe";
/// containerd namespace the probe image is pulled into (and removed from).
const CTR_NAMESPACE: &str = "oci-cache-doctor";
/// The socket of the containerd k3s and RKE2 run (both use this path).
const K3S_SOCKET: &str = "/run/k3s/containerd/containerd.sock";

/// What the probe of one runtime found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProbeResult {
    /// The runtime probed.
    pub(crate) runtime: &'static str,
    /// The reference pulled.
    pub(crate) reference: String,
    /// The client pulled the image.
    pub(crate) pulled: bool,
    /// The mirror saw the pull: proof the runtime goes through it.
    pub(crate) seen_by_mirror: bool,
    /// The probe image was removed from the node afterwards.
    pub(crate) removed: bool,
    /// What happened, for a person.
    pub(crate) detail: String,
}

/// A fresh nonce: 16 random bytes as hex, a valid tag.
fn nonce() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for the probe nonce: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn run(program: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            stderr.trim().lines().last().unwrap_or_default()
        ))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The pull and removal commands for `runtime`, or `None` when it has no
/// client the probe can drive.
fn commands(
    node: &Node<'_>,
    runtime: &RuntimeReport,
    upstream: &str,
    reference: &str,
) -> Option<(&'static str, Vec<String>, Vec<String>)> {
    match runtime.runtime {
        "docker" => {
            // dockerd's references name docker.io implicitly.
            let short = reference.strip_prefix("docker.io/").unwrap_or(reference);
            Some((
                "docker",
                strings(&["pull", "--quiet", short]),
                strings(&["rmi", "--force", short]),
            ))
        }
        "podman" => Some((
            "podman",
            strings(&["pull", "--quiet", reference]),
            strings(&["rmi", "--force", reference]),
        )),
        "containerd" => {
            // ctr reads no config_path of its own: give it the directory
            // the CRI plugin would use for this upstream.
            let source = runtime
                .upstreams
                .iter()
                .find(|u| u.upstream == upstream)?
                .source
                .as_deref()?;
            let dir = std::path::Path::new(source).parent()?.parent()?;
            Some(ctr_commands(
                None,
                &node.path(&dir.display().to_string()),
                reference,
            ))
        }
        "k3s" | "rke2" => {
            // k3s and RKE2 run their own containerd on their own socket and
            // write the hosts.toml tree they make of registries.yaml under
            // their agent directory: ctr on that socket with that tree pulls
            // as the kubelet's pulls do.
            let socket = node.path(K3S_SOCKET);
            if !socket.exists() {
                return None;
            }
            let hosts_dir = node.path(&format!(
                "/var/lib/rancher/{}/agent/etc/containerd/certs.d",
                runtime.runtime
            ));
            Some(ctr_commands(Some(&socket), &hosts_dir, reference))
        }
        _ => None,
    }
}

/// `ctr` pull and removal commands in the probe's namespace, on `address`
/// (else ctr's default or `CONTAINERD_ADDRESS`), with `hosts_dir`.
fn ctr_commands(
    address: Option<&std::path::Path>,
    hosts_dir: &std::path::Path,
    reference: &str,
) -> (&'static str, Vec<String>, Vec<String>) {
    let mut common = Vec::new();
    if let Some(address) = address {
        common.push("--address".to_owned());
        common.push(address.display().to_string());
    }
    common.extend(strings(&["-n", CTR_NAMESPACE]));
    let mut pull = common.clone();
    pull.extend(strings(&["content", "fetch", "--hosts-dir"]));
    pull.push(hosts_dir.display().to_string());
    pull.extend(strings(&["--platform", "linux/amd64", reference]));
    let mut remove = common;
    remove.extend(strings(&["images", "rm", "--sync", reference]));
    ("ctr", pull, remove)
}

/// Whether the mirror saw `nonce` (`GET /doctor/probe/NONCE`).
fn seen(mirror: &MirrorUrl, nonce: &str) -> Result<bool, String> {
    if mirror.is_https() {
        return Err("the probe asks an https mirror nothing yet (plain HTTP only)".to_owned());
    }
    let (code, line, body) =
        crate::healthcheck::http_get(mirror.authority(), &format!("/doctor/probe/{nonce}"))?;
    if code != 200 {
        return Err(format!(
            "the mirror answered {line:?} for its probe record: an oci-cache without the doctor probe?"
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("the probe record is not JSON: {e}"))?;
    Ok(answer["seen"] == true)
}

/// Probes every runtime in `runtimes` that has a client here.
pub(crate) fn probe_all(node: &Node<'_>, runtimes: &[RuntimeReport]) -> Vec<ProbeResult> {
    let upstream = node
        .upstreams
        .iter()
        .find(|u| *u == oci_cache_core::mirror::DOCKER_HUB)
        .or(node.upstreams.first())
        .cloned()
        .unwrap_or_else(|| oci_cache_core::mirror::DOCKER_HUB.to_owned());
    let mut results = Vec::new();
    for runtime in runtimes {
        let nonce = match nonce() {
            Ok(nonce) => nonce,
            Err(detail) => {
                results.push(failed(runtime.runtime, String::new(), detail));
                continue;
            }
        };
        let reference = format!("{upstream}/{PROBE_REPOSITORY}:{nonce}");
        let Some((program, pull, remove)) = commands(node, runtime, &upstream, &reference) else {
            continue;
        };
        let pulled = run(program, &pull);
        let removed = pulled.is_ok() && run(program, &remove).is_ok();
        let seen = seen(node.mirror, &nonce);
        let seen_by_mirror = seen.as_ref().is_ok_and(|s| *s);
        let detail = match (&pulled, &seen) {
            (_, Err(e)) => e.clone(),
            (Ok(_), Ok(true)) => format!("{program} pulled it and the mirror saw the pull"),
            (Ok(_), Ok(false)) => {
                format!("{program} pulled it, but not from the mirror: this runtime goes around it")
            }
            (Err(e), Ok(true)) => format!("the mirror saw the pull, but {program} failed: {e}"),
            (Err(e), Ok(false)) => format!("the mirror never saw the pull: {e}"),
        };
        results.push(ProbeResult {
            runtime: runtime.runtime,
            reference,
            pulled: pulled.is_ok(),
            seen_by_mirror,
            removed,
            detail,
        });
    }
    results
}

fn failed(runtime: &'static str, reference: String, detail: String) -> ProbeResult {
    ProbeResult {
        runtime,
        reference,
        pulled: false,
        seen_by_mirror: false,
        removed: false,
        detail,
    }
}
