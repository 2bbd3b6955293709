//! `oci-cache client-config KIND`: the client-side configuration that points
//! a container runtime at this mirror, derived from one mirror URL and the
//! configured upstreams.
//!
//! Each KIND is rendered by [`render`] into a list of files (relative paths
//! and contents); this module parses the arguments, picks the upstreams and
//! writes or prints the files. Mirror authentication is not generated yet:
//! the mirror does not check clients.

mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use oci_cache_core::mirror::{MirrorConfig, UpstreamConfig};

use crate::cli::ConfigArgs;
use crate::config;

/// Exit status for arguments or configuration that cannot be used.
const EXIT_USAGE: u8 = 2;

/// `oci-cache client-config KIND --mirror URL [--upstream NAME]... [--output DIR]`.
#[derive(Debug, Args)]
pub(crate) struct ClientConfigArgs {
    /// The client to configure.
    #[arg(value_enum)]
    pub(crate) kind: ClientKind,

    /// The mirror as clients reach it: `http://HOST:PORT` or `https://HOST[:PORT]`.
    #[arg(long, value_name = "URL")]
    pub(crate) mirror: String,

    /// Only this upstream (repeatable; a name or alias the mirror serves).
    /// Default: every configured upstream, plus a catch-all where the client has one.
    #[arg(long = "upstream", value_name = "NAME")]
    pub(crate) upstreams: Vec<String>,

    /// Write the files under DIR (the `certs.d` directory itself for
    /// containerd) instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,

    /// Path-prefix endpoints (`URL/v2/NAME` with overridePath) instead of
    /// the registry name in `ns` (containerd, talos, kind).
    #[arg(long)]
    pub(crate) path_prefix: bool,

    /// Output variant: talos `documents` (Talos ≥ 1.12, default) or
    /// `machine-patch`; buildkit `buildkitd` (default) or `earthly`.
    #[arg(long, value_enum)]
    pub(crate) form: Option<Form>,

    /// CA certificate clients use to trust an https mirror (its path on the
    /// client; Talos gets the PEM inlined, so the file is read here).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// The mirror's configuration sources, for its upstreams (as for `serve`).
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

/// The clients `client-config` writes configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientKind {
    /// containerd `certs.d` tree: `<registry>/hosts.toml` per upstream plus `_default`.
    Containerd,
    /// Talos `RegistryMirrorConfig` documents (Talos ≥ 1.12), or with
    /// `--form machine-patch` the `machine.registries` patch for older Talos.
    Talos,
    /// Docker daemon `daemon.json` (`registry-mirrors`; Docker mirrors docker.io only).
    Docker,
    /// podman / CRI-O / skopeo `registries.conf` with path-prefix mirror locations.
    Podman,
    /// BuildKit `buildkitd.toml`, or with `--form earthly` Earthly's
    /// `global.buildkit_additional_config`.
    Buildkit,
    /// Kind cluster config (`containerdConfigPatches`, mounts) plus its `certs.d` tree.
    Kind,
    /// k3s / RKE2 `registries.yaml`.
    K3s,
}

/// A variant of a KIND's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Form {
    /// Talos ≥ 1.12 `RegistryMirrorConfig` documents (talos default).
    Documents,
    /// The `machine.registries` patch for Talos before 1.12.
    MachinePatch,
    /// `buildkitd.toml` (buildkit default).
    Buildkitd,
    /// Earthly's `~/.earthly/config.yml` with `buildkit_additional_config`.
    Earthly,
}

/// How clients reach the mirror, parsed from `--mirror`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MirrorUrl {
    /// `http` or `https`.
    https: bool,
    /// `host[:port]` as given.
    authority: String,
}

impl MirrorUrl {
    /// Accepts `http://host[:port]` and `https://host[:port]` (a trailing `/` is fine).
    pub(crate) fn parse(text: &str) -> Result<MirrorUrl, String> {
        let bad = |why: &str| {
            format!("invalid --mirror {text:?}: {why}; write it like http://10.0.0.5:5000 or https://mirror.example")
        };
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("the scheme must be http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("the host is missing"));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.contains(char::is_whitespace) {
            return Err(bad(
                "give only scheme, host and port (no path, query or credentials)",
            ));
        }
        Ok(MirrorUrl {
            https,
            authority: authority.to_owned(),
        })
    }

    /// True for an `https://` mirror.
    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// `host[:port]`.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// `http(s)://host[:port]`.
    pub(crate) fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

/// One generated file: where it goes (relative to `--output`) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GeneratedFile {
    /// Path relative to the output directory.
    pub(crate) path: PathBuf,
    /// The file's text.
    pub(crate) contents: String,
}

/// What a renderer needs: the mirror, the upstreams to cover, and options.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The mirror as clients reach it.
    pub(crate) mirror: MirrorUrl,
    /// The upstreams to write entries for, in name order.
    pub(crate) upstreams: Vec<&'a UpstreamConfig>,
    /// The upstream the mirror serves requests that name none.
    pub(crate) default_upstream: &'a str,
    /// True when every configured upstream is covered (then a catch-all
    /// entry is written where the client has one).
    pub(crate) all_upstreams: bool,
    /// Endpoints as `MIRROR/v2/NAME` with override_path.
    pub(crate) path_prefix: bool,
    /// The output variant.
    pub(crate) form: Option<Form>,
    /// CA certificate file clients use to trust an https mirror.
    pub(crate) ca_file: Option<PathBuf>,
    /// The absolute output directory, when files are written (Kind mounts need it).
    pub(crate) output: Option<PathBuf>,
}

pub(crate) fn run(args: &ClientConfigArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    match generate(args) {
        Ok(files) => match emit(&files, args.output.as_deref(), out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                let _ = writeln!(err, "error: {message}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Resolves the configuration and renders the KIND's files.
fn generate(args: &ClientConfigArgs) -> Result<Vec<GeneratedFile>, String> {
    let mirror = MirrorUrl::parse(&args.mirror)?;
    let mirrors = config::resolve_config(&args.config)?.mirrors;
    let upstreams = select(&mirrors, &args.upstreams)?;
    let output = match &args.output {
        Some(dir) => Some(absolute(dir)?),
        None => None,
    };
    let request = Request {
        mirror,
        upstreams,
        default_upstream: mirrors.default_upstream.as_str(),
        all_upstreams: args.upstreams.is_empty(),
        path_prefix: args.path_prefix,
        form: args.form,
        ca_file: args.ca_file.clone(),
        output,
    };
    render::render(args.kind, &request)
}

/// The named upstreams (each must be configured), or all of them.
fn select<'a>(
    mirrors: &'a MirrorConfig,
    names: &[String],
) -> Result<Vec<&'a UpstreamConfig>, String> {
    if names.is_empty() {
        return Ok(mirrors.upstreams.iter().collect());
    }
    let mut chosen: Vec<&UpstreamConfig> = Vec::new();
    for name in names {
        let upstream = mirrors.lookup(name).ok_or_else(|| {
            let known: Vec<&str> = mirrors.upstreams.iter().map(|u| u.name.as_str()).collect();
            format!(
                "--upstream {name:?} is not configured on the mirror (configured: {}); add it to the config file first",
                known.join(", ")
            )
        })?;
        if !chosen.iter().any(|u| u.name == upstream.name) {
            chosen.push(upstream);
        }
    }
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(chosen)
}

fn absolute(dir: &Path) -> Result<PathBuf, String> {
    if dir.is_absolute() {
        return Ok(dir.to_owned());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .map_err(|e| format!("cannot resolve --output {}: {e}", dir.display()))
}

/// Writes the files under `output`, or prints them: one file as it is,
/// several each after a `# ==> path <==` line.
fn emit(
    files: &[GeneratedFile],
    output: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), String> {
    let Some(dir) = output else {
        let printed = match files {
            [one] => write!(out, "{}", one.contents),
            many => many
                .iter()
                .try_for_each(|f| write!(out, "# ==> {} <==\n{}\n", f.path.display(), f.contents)),
        };
        return printed.map_err(|e| format!("cannot write to stdout: {e}"));
    };
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, &file.contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        writeln!(out, "wrote {}", path.display())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_keep_scheme_and_authority_only() {
        let m = MirrorUrl::parse("http://10.0.0.5:5000/").unwrap();
        assert!(!m.is_https());
        assert_eq!(m.authority(), "10.0.0.5:5000");
        assert_eq!(m.base(), "http://10.0.0.5:5000");
        assert_eq!(
            MirrorUrl::parse("https://mirror.example").unwrap().base(),
            "https://mirror.example"
        );
        for (bad, why) in [
            ("10.0.0.5:5000", "scheme"),
            ("http://", "host is missing"),
            ("http://m:5000/v2/docker.io", "no path"),
            ("http://u:p@m:5000", "no path, query or credentials"),
        ] {
            let err = MirrorUrl::parse(bad).unwrap_err();
            assert!(
                err.contains(why) && err.contains("http://10.0.0.5:5000"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn upstreams_are_chosen_by_name_or_alias_and_must_be_configured() {
        let mirrors = MirrorConfig::common();
        let all = select(&mirrors, &[]).unwrap();
        assert_eq!(all.len(), 5);
        let some = select(&mirrors, &["ghcr.io".into(), "index.docker.io".into()]).unwrap();
        let names: Vec<&str> = some.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "ghcr.io"]);
        let err = select(&mirrors, &["evil.example".into()]).unwrap_err();
        assert!(
            err.contains("evil.example") && err.contains("ghcr.io"),
            "{err}"
        );
    }

    #[test]
    fn several_files_are_printed_with_their_paths_or_written() {
        let files = vec![
            GeneratedFile {
                path: "a/hosts.toml".into(),
                contents: "x = 1\n".into(),
            },
            GeneratedFile {
                path: "b/hosts.toml".into(),
                contents: "y = 2\n".into(),
            },
        ];
        let mut out = Vec::new();
        emit(&files, None, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# ==> a/hosts.toml <==\nx = 1\n\n# ==> b/hosts.toml <==\ny = 2\n\n"
        );
        let mut out = Vec::new();
        emit(&files[..1], None, &mut out).unwrap();
        assert_eq!(out, b"x = 1\n");
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        emit(&files, Some(dir.path()), &mut out).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b/hosts.toml")).unwrap(),
            "y = 2\n"
        );
    }
}
