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

pub(crate) use local_registry::LocalRegistry;

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

    /// The mirror as clients reach it: `http://HOST:PORT` or `https://HOST[:PORT]`.
    #[arg(long, value_name = "URL")]
    pub(crate) mirror: String,

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

pub(crate) fn run(args: &ClientConfigArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    match generate(args) {
        Ok(files) => match emit(&files, args.output.as_deref(), args.username.is_some(), out) {
            Ok(()) => {
                // dockerd cannot authenticate to a mirror at all: say so
                // even without --username, as the mirror may need it.
                if args.username.is_some() || args.kind == ClientKind::Docker {
                    if let Some(note) = render::auth_note(args.kind, &args.mirror) {
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
    let mirror = MirrorUrl::parse(&args.mirror)?;
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
        write_file(&path, &file.contents, secret)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        writeln!(out, "wrote {}", path.display())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    Ok(())
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
        emit(&files, None, false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# ==> a/hosts.toml <==\nx = 1\n\n# ==> b/hosts.toml <==\ny = 2\n\n"
        );
        let mut out = Vec::new();
        emit(&files[..1], None, false, &mut out).unwrap();
        assert_eq!(out, b"x = 1\n");
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        emit(&files, Some(dir.path()), false, &mut out).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b/hosts.toml")).unwrap(),
            "y = 2\n"
        );
    }

    /// `oci-cache client-config ARGS…` parsed as the binary parses it.
    fn parse(args: &[&str]) -> ClientConfigArgs {
        use clap::Parser as _;
        let argv = ["oci-cache", "client-config"].iter().chain(args);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::ClientConfig(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn one_upstream_flag_defines_with_a_url_and_selects_without() {
        let args = parse(&[
            "k3s",
            "--mirror",
            "http://m:5000",
            "--default-upstream",
            "b.test",
            "--upstream",
            "b.test=http://127.0.0.1:9",
            "--upstream",
            "c.test=http://127.0.0.1:10",
            "--upstream",
            "c.test",
        ]);
        let text = String::from_utf8({
            let mut out = Vec::new();
            emit(&generate(&args).unwrap(), None, false, &mut out).unwrap();
            out
        })
        .unwrap();
        assert!(text.contains("\"c.test\":"), "{text}");
        assert!(!text.contains("b.test"), "{text}");
    }

    #[test]
    fn the_password_comes_from_a_file_or_variable_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = file.display().to_string();
        let base = ["k3s", "--mirror", "http://m:5000"];
        let with = |extra: &[&str]| {
            let all: Vec<&str> = base.iter().chain(extra).copied().collect();
            credentials(&parse(&all))
        };
        let auth = with(&["--username", "node", "--password-file", &file])
            .unwrap()
            .unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("node", "s3cret")
        );
        assert_eq!(with(&[]).unwrap(), None);
        let err = with(&["--username", "node"]).unwrap_err();
        assert!(
            err.contains("--password-file FILE or --password-env VAR"),
            "{err}"
        );
        let err = with(&[
            "--username",
            "node",
            "--password-file",
            &file,
            "--password-env",
            "HOME",
        ])
        .unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
        let err = with(&["--password-file", &file]).unwrap_err();
        assert!(err.contains("need --username"), "{err}");
        let err = with(&["--username", "a:b", "--password-file", &file]).unwrap_err();
        assert!(err.contains("no ':'"), "{err}");
        let err = with(&[
            "--username",
            "node",
            "--password-env",
            "OCI_CACHE_TEST_UNSET_9F",
        ])
        .unwrap_err();
        assert!(err.contains("OCI_CACHE_TEST_UNSET_9F"), "{err}");
    }

    #[test]
    fn files_with_credentials_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let files = vec![GeneratedFile {
            path: "registries.yaml".into(),
            contents: "configs: {}\n".into(),
        }];
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        emit(&files, Some(dir.path()), true, &mut Vec::new()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "configs: {}\n");
    }

    #[test]
    fn merge_refuses_a_daemon_json_that_is_not_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        for (text, why) in [
            ("[1, 2]", "not a JSON object"),
            ("{\"debug\": tru", "not valid JSON"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = read_daemon_json(&file).unwrap_err();
            assert!(err.contains(why) && err.contains("daemon.json"), "{err}");
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(read_daemon_json(&file).unwrap().is_empty());
        let path = file.display().to_string();
        let args = parse(&["docker", "--mirror", "http://m:5000", "--merge", &path]);
        std::fs::write(&file, "{\"debug\": true}").unwrap();
        let merged: serde_json::Value =
            serde_json::from_str(&generate(&args).unwrap()[0].contents).unwrap();
        assert_eq!(merged["debug"], true);
        assert_eq!(merged["registry-mirrors"][0], "http://m:5000");
    }
}
