//! `oci-cache client-config KIND`: the client-side configuration that points
//! a container runtime at this mirror, derived from one mirror URL and the
//! configured upstreams.
//!
//! Each KIND is rendered by [`render`] into a list of files (relative paths
//! and contents); this module parses the arguments, picks the upstreams and
//! writes or prints the files. With `--username`, each KIND carries the
//! mirror's client credentials where its client can send them to a mirror,
//! and says so (in the file and on stderr) where it cannot.

mod local_registry;
mod render;
mod served;

pub(crate) use local_registry::LocalRegistry;
pub(crate) use served::ServedClientConfig;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use oci_cache_core::mirror::{Credentials, MirrorConfig, UpstreamConfig};

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

    /// The mirror as clients reach it: `http://HOST:PORT` or `https://HOST[:PORT]`
    /// (with --from: the URL it was fetched from unless given).
    #[arg(long, value_name = "URL", required_unless_present = "from")]
    pub(crate) mirror: Option<String>,

    /// Fetch the configuration from a running mirror (`GET
    /// URL/client-config/KIND`), made from its real upstreams and listeners,
    /// instead of reading its configuration files here.
    #[arg(long, value_name = "URL")]
    pub(crate) from: Option<String>,

    /// Write the files under DIR (the `certs.d` directory itself for
    /// containerd) instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,

    /// Path-prefix endpoints (`URL/v2/NAME` with overridePath) instead of
    /// the registry name in `ns` (containerd, talos, kind).
    #[arg(long)]
    pub(crate) path_prefix: bool,

    /// Output variant: talos `documents` (Talos ≥ 1.12, default),
    /// `machine-patch` or `flags` (`talosctl cluster create
    /// --registry-mirror`); buildkit `buildkitd` (default) or `earthly`.
    #[arg(long, value_enum)]
    pub(crate) form: Option<Form>,

    /// Talos: no fallback to the registry itself when the mirror fails
    /// (`skipFallback: true`), so a broken mirror shows instead of being
    /// bypassed silently.
    #[arg(long)]
    pub(crate) skip_fallback: bool,

    /// Kind: worker nodes to declare, each with the `certs.d` mount (a
    /// node without it pulls from the registries themselves).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) workers: u8,

    /// Docker: merge `registry-mirrors` (and `insecure-registries` for an
    /// http mirror) into this existing `daemon.json`, keeping every other
    /// key, instead of writing a new file.
    #[arg(long, value_name = "FILE")]
    pub(crate) merge: Option<PathBuf>,

    /// The registry name developers push to, `HOST:PORT[/PREFIX]` such as
    /// `localhost:5001/local` (kind, containerd): its `hosts.toml` sends
    /// pulls of that name to the mirror, and kind also gets the KEP-1755
    /// `local-registry-hosting` ConfigMap that tells Tilt where to push.
    #[arg(long, value_name = "HOST:PORT[/PREFIX]")]
    pub(crate) local_registry: Option<String>,

    /// CA certificate clients use to trust an https mirror (its path on the
    /// client; Talos gets the PEM inlined, so the file is read here).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// User name clients send to a mirror with client authentication
    /// (`[auth] htpasswd`); the password comes from --password-file or
    /// --password-env, never from the command line.
    #[arg(long, value_name = "NAME")]
    pub(crate) username: Option<String>,

    /// File holding the password for --username (a trailing newline is dropped).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,

    /// Environment variable holding the password for --username.
    #[arg(long, value_name = "VAR")]
    pub(crate) password_env: Option<String>,

    /// The mirror's configuration sources, for its upstreams (as for `serve`).
    /// Its `--upstream` is shared: `NAME=URL` defines an upstream as for
    /// `serve`, a bare `NAME` (a name or alias the mirror serves) selects
    /// it. Default: every configured upstream, plus a catch-all where the
    /// client has one.
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
    /// `talosctl cluster create --registry-mirror NAME=URL` flags.
    Flags,
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
    /// The credentials clients send to the mirror (`--username`).
    pub(crate) auth: Option<Credentials>,
    /// The registry name developers push to (`--local-registry`).
    pub(crate) local_registry: Option<LocalRegistry>,
    /// Talos `skipFallback: true` (`--skip-fallback`).
    pub(crate) skip_fallback: bool,
    /// Kind worker nodes (`--workers`).
    pub(crate) workers: u8,
    /// The existing `daemon.json` object to merge into (`--merge`).
    pub(crate) merge_into: Option<serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Request<'a> {
    /// The plain form for `mirror`: every upstream given, no option set
    /// (what the mirror serves at `/client-config/KIND`).
    pub(crate) fn plain(
        mirror: MirrorUrl,
        upstreams: Vec<&'a UpstreamConfig>,
        default_upstream: &'a str,
    ) -> Request<'a> {
        Request {
            mirror,
            upstreams,
            default_upstream,
            all_upstreams: true,
            path_prefix: false,
            form: None,
            ca_file: None,
            output: None,
            auth: None,
            local_registry: None,
            skip_fallback: false,
            workers: 0,
            merge_into: None,
        }
    }
}

pub(crate) fn run(args: &ClientConfigArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    if let Some(from) = &args.from {
        return match served::fetch(args, from) {
            Ok(text) => match write!(out, "{text}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(err, "error: cannot write to stdout: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(message) => {
                let _ = writeln!(err, "error: {message}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    let mirror = args.mirror.as_deref().unwrap_or_default();
    match generate(args) {
        Ok(files) => match emit(&files, args.output.as_deref(), args.username.is_some(), out) {
            Ok(()) => {
                // dockerd cannot authenticate to a mirror at all: say so
                // even without --username, as the mirror may need it.
                if args.username.is_some() || args.kind == ClientKind::Docker {
                    if let Some(note) = render::auth_note(args.kind, mirror) {
                        let _ = writeln!(err, "note: {note}");
                    }
                }
                ExitCode::SUCCESS
            }
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
    let mirror = MirrorUrl::parse(args.mirror.as_deref().unwrap_or_default())?;
    let (mirrors, selected) = mirror_upstreams(&args.config)?;
    let upstreams = select(&mirrors, &selected)?;
    let output = match &args.output {
        Some(dir) => Some(absolute(dir)?),
        None => None,
    };
    let auth = credentials(args)?;
    let local_registry = match &args.local_registry {
        Some(text) => Some(LocalRegistry::parse(text)?),
        None => None,
    };
    let request = Request {
        mirror,
        upstreams,
        default_upstream: mirrors.default_upstream.as_str(),
        all_upstreams: selected.is_empty(),
        path_prefix: args.path_prefix,
        form: args.form,
        ca_file: args.ca_file.clone(),
        output,
        auth,
        local_registry,
        skip_fallback: args.skip_fallback,
        workers: args.workers,
        merge_into: match &args.merge {
            Some(path) => Some(read_daemon_json(path)?),
            None => None,
        },
    };
    render::render(args.kind, &request)
}

/// The existing `daemon.json` for `--merge`: a JSON object, or an error
/// saying why it cannot be merged into.
fn read_daemon_json(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --merge {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        // dockerd reads an empty daemon.json as no settings.
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!(
            "--merge {}: not a JSON object, so not a daemon.json dockerd would read; fix it or write a new file without --merge",
            path.display()
        )),
        Err(e) => Err(format!(
            "--merge {}: not valid JSON ({e}); dockerd would not start with it either, fix it first",
            path.display()
        )),
    }
}

/// The mirror's upstreams from its configuration sources, and the names a
/// bare `--upstream NAME` selects: one `--upstream` flag has both meanings
/// (clap allows one per command), `NAME=URL` defining an upstream.
pub(crate) fn mirror_upstreams(config: &ConfigArgs) -> Result<(MirrorConfig, Vec<String>), String> {
    let (defined, selected): (Vec<String>, Vec<String>) = config
        .upstreams
        .iter()
        .cloned()
        .partition(|u| u.contains('='));
    let sources = ConfigArgs {
        upstreams: defined,
        ..config.clone()
    };
    Ok((config::resolve_config(&sources)?.mirrors, selected))
}

/// The mirror credentials from `--username` and its password source, read
/// as the mirror reads an upstream's `credentials` (one place for that rule).
fn credentials(args: &ClientConfigArgs) -> Result<Option<Credentials>, String> {
    let Some(username) = &args.username else {
        if args.password_file.is_some() || args.password_env.is_some() {
            return Err("--password-file and --password-env need --username".to_owned());
        }
        return Ok(None);
    };
    if username.is_empty() || username.contains(':') {
        return Err(format!(
            "--username {username:?}: a user name for Basic authentication is not empty and has no ':'"
        ));
    }
    let spec = match (&args.password_file, &args.password_env) {
        (Some(file), None) => serde_json::json!({ "username": username, "password_file": file }),
        (None, Some(var)) => serde_json::json!({ "username": username, "password_env": var }),
        _ => {
            return Err(
                "--username needs exactly one of --password-file FILE or --password-env VAR (a password on the command line would end up in shell history)"
                    .to_owned(),
            )
        }
    };
    serde_json::from_value(spec)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The named upstreams (each must be configured), or all of them.
pub(crate) fn select<'a>(
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
/// several each after a `# ==> path <==` line. Files holding `secret`
/// credentials are written readable by their owner only.
fn emit(
    files: &[GeneratedFile],
    output: Option<&Path>,
    secret: bool,
    out: &mut impl Write,
) -> Result<(), String> {
    let Some(dir) = output else {
        return write!(out, "{}", printed(files))
            .map_err(|e| format!("cannot write to stdout: {e}"));
    };
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        write_file(&path, &file.contents, secret)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        writeln!(out, "wrote {}", path.display())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    Ok(())
}

/// The files as printed: one file as it is, several each after a
/// `# ==> path <==` line (what the mirror serves at `/client-config/KIND`).
pub(crate) fn printed(files: &[GeneratedFile]) -> String {
    match files {
        [one] => one.contents.clone(),
        many => many.iter().fold(String::new(), |mut text, f| {
            text.push_str(&format!("# ==> {} <==\n{}\n", f.path.display(), f.contents));
            text
        }),
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    if secret {
        // `mode` applies only to a new file: an existing one is narrowed here.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
#[path = "client_config/tests.rs"]
mod tests;
