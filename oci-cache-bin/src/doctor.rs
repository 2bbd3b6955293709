//! `oci-cache doctor --mirror URL`: the inverse of `client-config`. It reads
//! what a node's container runtimes will do (their files under `--root`) and
//! says, per upstream, whether pulls go to the mirror, which endpoints are
//! tried in which order, and every known reason they would not, with the fix.
//!
//! Each runtime has its own module that reads its files and returns a
//! [`RuntimeReport`], or nothing when the runtime is not configured on the
//! node. The upstreams come from the mirror's configuration sources, as for
//! `client-config` (default: the five common upstreams, docker.io the default).

mod containerd;
mod docker;
mod k3s;
mod podman;
mod probe;
mod talos;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::cli::ConfigArgs;
use crate::client_config::{self, MirrorUrl};

/// Exit status: every configured runtime pulls every upstream through the mirror.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: some runtime sends some upstream's pulls around the mirror.
pub(crate) const EXIT_BYPASSED: u8 = 1;
/// Exit status: arguments or the mirror's configuration cannot be used.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status: the mirror does not answer `GET /v2/` (configuration may be right).
pub(crate) const EXIT_MIRROR_UNREACHABLE: u8 = 3;
/// Exit status: no runtime configuration was found under `--root`.
pub(crate) const EXIT_NO_RUNTIME: u8 = 4;
/// Exit status: the configuration looks right, but a runtime's probe pull
/// did not reach the mirror.
pub(crate) const EXIT_PROBE_NOT_SEEN: u8 = 5;

/// `oci-cache doctor --mirror URL [--root DIR] [--no-probe] [--json]`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The mirror as the node reaches it: `http://HOST:PORT` or `https://HOST[:PORT]`.
    #[arg(long, value_name = "URL")]
    pub(crate) mirror: String,

    /// Read the node's files under DIR (a mounted node disk, a fixture).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub(crate) root: PathBuf,

    /// A Talos node's machine config to check (repeatable): what `talosctl
    /// get machineconfig -o yaml` prints, a config patch, or
    /// `RegistryMirrorConfig` documents. Under `--root`, the STATE
    /// partition's `/system/state/config.yaml` is checked as well. (The
    /// shared `--talos-config` is a source of the mirror's own upstreams.)
    #[arg(long, value_name = "FILE")]
    pub(crate) talos_machine_config: Vec<PathBuf>,

    /// Check the configuration only: no probe pull by the node's runtimes.
    #[arg(long)]
    pub(crate) no_probe: bool,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,

    /// The mirror's configuration sources, for its upstreams and default
    /// upstream (as for `client-config`; a bare `--upstream NAME` checks that
    /// upstream only).
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

/// Why pulls of an upstream (or of every upstream) miss the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Problem {
    /// A stable name for scripts, e.g. `wrong-host`.
    pub(crate) code: &'static str,
    /// What is wrong, naming the file.
    pub(crate) message: String,
    /// What to change.
    pub(crate) fix: String,
}

impl Problem {
    pub(crate) fn new(
        code: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Problem {
        Problem {
            code,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Where one runtime sends the pulls of one upstream.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UpstreamRoute {
    /// The upstream's name, e.g. `docker.io`.
    pub(crate) upstream: String,
    /// True when the first endpoint tried is the mirror and nothing is wrong.
    pub(crate) via_mirror: bool,
    /// The endpoints tried, in order.
    pub(crate) endpoints: Vec<String>,
    /// The file that decided it, if any.
    pub(crate) source: Option<String>,
    /// Every reason the pulls miss the mirror.
    pub(crate) problems: Vec<Problem>,
    /// Risks that do not make pulls miss the mirror today (a silent
    /// fallback to the registry itself); they do not fail doctor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<Problem>,
}

impl UpstreamRoute {
    /// A route through `endpoints`, going through the mirror when the first
    /// one is the mirror and no `problems` were found.
    pub(crate) fn new(
        upstream: &str,
        mirror: &MirrorUrl,
        endpoints: Vec<String>,
        source: Option<String>,
        mut problems: Vec<Problem>,
    ) -> UpstreamRoute {
        let at = source.as_deref().unwrap_or("the configuration");
        match endpoints
            .iter()
            .position(|e| same_host(mirror, e) == HostMatch::Same)
        {
            Some(0) => {}
            Some(_) => problems.push(Problem::new(
                "mirror-not-first",
                format!(
                    "{at}: {upstream} tries {} before the mirror {}",
                    endpoints.first().map(String::as_str).unwrap_or_default(),
                    mirror.base()
                ),
                "list the mirror first",
            )),
            None if problems.is_empty() => {
                let near = endpoints
                    .iter()
                    .find(|e| same_host(mirror, e) == HostMatch::OtherScheme);
                let (code, why) = match near {
                    Some(e) => (
                        "wrong-scheme",
                        format!("{e} (the mirror speaks {})", mirror.base()),
                    ),
                    None => (
                        "wrong-host",
                        match endpoints.first() {
                            Some(first) => format!("{first}, not the mirror {}", mirror.base()),
                            None => format!("nothing, not the mirror {}", mirror.base()),
                        },
                    ),
                };
                problems.push(Problem::new(
                    code,
                    format!("{at}: {upstream} points at {why}"),
                    "regenerate the file with `oci-cache client-config` for this mirror URL",
                ));
            }
            None => {}
        }
        UpstreamRoute {
            upstream: upstream.to_owned(),
            via_mirror: problems.is_empty(),
            endpoints,
            source,
            problems,
            warnings: Vec::new(),
        }
    }

    /// The route with `warnings` added.
    pub(crate) fn with_warnings(mut self, warnings: Vec<Problem>) -> UpstreamRoute {
        self.warnings.extend(warnings);
        self
    }
}

/// What one runtime on the node will do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuntimeReport {
    /// `containerd`, `docker`, `podman`, `k3s`, `rke2` or `talos`.
    pub(crate) runtime: &'static str,
    /// The files read (paths on the node).
    pub(crate) files: Vec<String>,
    /// Per upstream.
    pub(crate) upstreams: Vec<UpstreamRoute>,
    /// Facts worth knowing that do not make pulls miss the mirror.
    pub(crate) notes: Vec<String>,
}

impl RuntimeReport {
    fn through_mirror(&self) -> bool {
        self.upstreams.iter().all(|u| u.via_mirror)
    }
}

/// Whether the mirror answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MirrorCheck {
    /// The mirror URL checked.
    pub(crate) url: String,
    /// True when `GET /v2/` answered 200 or 401.
    pub(crate) reachable: bool,
    /// What was seen.
    pub(crate) detail: String,
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The mirror and whether it answers.
    pub(crate) mirror: MirrorCheck,
    /// Every runtime configured under the root.
    pub(crate) runtimes: Vec<RuntimeReport>,
    /// The probe pulls (empty with `--no-probe`).
    pub(crate) probes: Vec<probe::ProbeResult>,
    /// `pass`, `bypassed`, `mirror-unreachable`, `probe-not-seen` or `no-runtime`.
    pub(crate) verdict: &'static str,
    /// The exit status.
    pub(crate) exit_code: u8,
}

/// What the runtime checks need.
pub(crate) struct Node<'a> {
    /// The node's root directory.
    pub(crate) root: &'a Path,
    /// The mirror.
    pub(crate) mirror: &'a MirrorUrl,
    /// The upstreams to check.
    pub(crate) upstreams: &'a [String],
    /// The mirror's default upstream (what a request naming none gets).
    pub(crate) default_upstream: &'a str,
    /// Talos machine config files given on the command line.
    pub(crate) talos_configs: &'a [PathBuf],
}

impl Node<'_> {
    /// `path` (absolute on the node) under the root.
    pub(crate) fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The file's text, `None` when it does not exist.
    pub(crate) fn read(&self, path: &str) -> Result<Option<String>, String> {
        match std::fs::read_to_string(self.path(path)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {path}: {e}")),
        }
    }
}

/// How an endpoint URL compares with the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// Same scheme and `host:port`.
    Same,
    /// Same `host:port`, other scheme.
    OtherScheme,
    /// Another host or port.
    Other,
}

/// Compares `url` (`scheme://host[:port][/path]`, or `host[:port][/path]`
/// meaning https) with the mirror; default ports count as written.
pub(crate) fn same_host(mirror: &MirrorUrl, url: &str) -> HostMatch {
    let (https, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => (true, url),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let normal = |authority: &str, https: bool| {
        let authority = authority.to_ascii_lowercase();
        if authority.contains(':') && !authority.ends_with(']') {
            authority
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        }
    };
    let ours = normal(mirror.authority(), mirror.is_https());
    if normal(authority, https) == ours && https == mirror.is_https() {
        HostMatch::Same
    } else if normal(authority, mirror.is_https()) == ours {
        HostMatch::OtherScheme
    } else {
        HostMatch::Other
    }
}

/// Every runtime's report and the mirror's answer; with `run_probe`, each
/// runtime's client also pulls the probe image (when the mirror answers).
pub(crate) fn diagnose(
    node: &Node<'_>,
    mirror: MirrorCheck,
    run_probe: bool,
) -> Result<Report, String> {
    let mut runtimes = Vec::new();
    runtimes.extend(containerd::check(node)?);
    runtimes.extend(docker::check(node)?);
    runtimes.extend(podman::check(node)?);
    runtimes.extend(k3s::check(node)?);
    runtimes.extend(talos::check(node)?);
    let probes = if run_probe && mirror.reachable {
        probe::probe_all(node, &runtimes)
    } else {
        Vec::new()
    };
    let (verdict, exit_code) = if !mirror.reachable {
        ("mirror-unreachable", EXIT_MIRROR_UNREACHABLE)
    } else if runtimes.iter().any(|r| !r.through_mirror()) {
        ("bypassed", EXIT_BYPASSED)
    } else if probes.iter().any(|p| !p.seen_by_mirror) {
        ("probe-not-seen", EXIT_PROBE_NOT_SEEN)
    } else if runtimes.is_empty() {
        ("no-runtime", EXIT_NO_RUNTIME)
    } else {
        ("pass", EXIT_OK)
    };
    Ok(Report {
        mirror,
        runtimes,
        probes,
        verdict,
        exit_code,
    })
}

/// `GET /v2/` on the mirror: 200 or 401 (client authentication) is an
/// answering registry. An https mirror is only connected to.
fn check_mirror(mirror: &MirrorUrl) -> MirrorCheck {
    let authority = match (mirror.authority().contains(':'), mirror.is_https()) {
        (true, _) => mirror.authority().to_owned(),
        (false, true) => format!("{}:443", mirror.authority()),
        (false, false) => format!("{}:80", mirror.authority()),
    };
    let (reachable, detail) = if mirror.is_https() {
        match std::net::TcpStream::connect(&authority) {
            Ok(_) => (
                true,
                "TCP connection accepted (https: /v2/ not asked)".to_owned(),
            ),
            Err(e) => (false, format!("cannot connect to {authority}: {e}")),
        }
    } else {
        match crate::healthcheck::http_get(&authority, "/v2/") {
            Ok((200 | 401, line, _)) => (true, format!("GET /v2/ answered {line}")),
            Ok((_, line, _)) => (false, format!("GET /v2/ answered {line:?}: not a registry")),
            Err(e) => (false, e),
        }
    };
    MirrorCheck {
        url: mirror.base(),
        reachable,
        detail,
    }
}

pub(crate) fn run(args: &DoctorArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    let prepared = MirrorUrl::parse(&args.mirror).and_then(|mirror| {
        let (mirrors, selected) = client_config::mirror_upstreams(&args.config)?;
        let names: Vec<String> = client_config::select(&mirrors, &selected)?
            .iter()
            .map(|u| u.name.to_string())
            .collect();
        Ok((mirror, names, mirrors.default_upstream.to_string()))
    });
    let (mirror, upstreams, default_upstream) = match prepared {
        Ok(prepared) => prepared,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let node = Node {
        root: &args.root,
        mirror: &mirror,
        upstreams: &upstreams,
        default_upstream: &default_upstream,
        talos_configs: &args.talos_machine_config,
    };
    let report = match diagnose(&node, check_mirror(&mirror), !args.no_probe) {
        Ok(report) => report,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let printed = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|text| writeln!(out, "{text}"))
    } else {
        write!(out, "{}", render_text(&report))
    };
    if let Err(e) = printed {
        let _ = writeln!(err, "error: cannot write the report: {e}");
    }
    ExitCode::from(report.exit_code)
}

/// The report for a person.
pub(crate) fn render_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(
        text,
        "[{}] mirror {}: {}",
        mark(report.mirror.reachable),
        report.mirror.url,
        report.mirror.detail
    );
    if !report.mirror.reachable {
        let _ = writeln!(
            text,
            "       fix: start the mirror, or check that this node reaches {} (firewall, address)",
            report.mirror.url
        );
    }
    if report.runtimes.is_empty() {
        text.push_str("[FAIL] no container runtime configuration found (containerd, Docker, podman/CRI-O, k3s/RKE2, Talos)\n");
    }
    for runtime in &report.runtimes {
        let _ = writeln!(
            text,
            "[{}] {} ({})",
            mark(runtime.through_mirror()),
            runtime.runtime,
            runtime.files.join(", ")
        );
        for note in &runtime.notes {
            let _ = writeln!(text, "       note: {note}");
        }
        for route in &runtime.upstreams {
            let _ = writeln!(
                text,
                "  [{}] {}: {}",
                mark(route.via_mirror),
                route.upstream,
                if route.endpoints.is_empty() {
                    "no endpoints".to_owned()
                } else {
                    route.endpoints.join(" -> ")
                }
            );
            for problem in &route.problems {
                let _ = writeln!(
                    text,
                    "         {} ({})\n         fix: {}",
                    problem.message, problem.code, problem.fix
                );
            }
            for warning in &route.warnings {
                let _ = writeln!(
                    text,
                    "         warning: {} ({})\n         fix: {}",
                    warning.message, warning.code, warning.fix
                );
            }
        }
    }
    let _ = writeln!(
        text,
        "verdict: {} (exit {})",
        report.verdict, report.exit_code
    );
    text
}

#[cfg(test)]
#[path = "doctor/tests.rs"]
mod tests;
