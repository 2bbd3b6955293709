//! The configuration file (TOML), merged with flags and environment variables.
//!
//! Precedence, highest first: command-line flag, `OCI_CACHE_*` environment
//! variable (clap reads them into the same flags), config file, built-in default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_cache_core::mirror::{Import, MirrorConfig, UpstreamConfig};
use oci_cache_core::policy::{PolicyRule, PullPolicy};
use oci_cache_core::reference::Registry;
use oci_cache_http::client_auth::ClientAuthConfig;
use oci_cache_http::tls_server::TlsFiles;
use oci_cache_http::ServerOptions;
use serde::Deserialize;

use oci_cache_core::cache::CacheOptions;
use oci_cache_http::UpstreamOptions;

use crate::cli::{ConfigArgs, ServeArgs};
use oci_cache_core::bounds;
use oci_cache_core::duration::parse_duration;
use oci_cache_core::hosted::HostedOptions;

/// Where `serve` listens when nothing says otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// Where the filesystem storage lives when nothing says otherwise.
pub(crate) const DEFAULT_STORAGE_DIR: &str = "./oci-cache-data";
/// Exit status for configuration the program cannot use.
pub(crate) const EXIT_CONFIG: u8 = 2;

/// The file as written by the operator; every field optional.
///
/// Library option types deserialize straight from their own table, so a
/// knob is added in the library only: the cache engine's options go in as
/// one `cache: Option<CacheOptions>` field (`[cache]`), the upstream client's
/// as one `upstream_client: Option<UpstreamOptions>` field (`[upstream_client]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    default_upstream: Option<String>,
    tag_ttl: Option<String>,
    /// First path components of hosted (pushable) repositories.
    local_prefixes: Option<Vec<String>>,
    /// Age after which an untouched upload session is removed (`24h`).
    upload_max_age: Option<String>,
    /// Open upload sessions per client address, and their bytes in all.
    max_uploads_per_client: Option<usize>,
    max_upload_bytes: Option<String>,
    storage: Option<StorageConfig>,
    /// More listening addresses, each with its own default upstream.
    #[serde(default, rename = "listener")]
    listeners: Vec<listeners::ListenerEntry>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<UpstreamEntry>,
    /// `[cache]`: the engine's options, straight into the library's type.
    #[serde(default)]
    cache: Option<CacheOptions>,
    /// `[upstream_client]`: the upstream client's options, likewise.
    #[serde(default)]
    upstream_client: UpstreamOptions,
    /// Upstreams from registry:2 configuration (`registry_compat`), not the file.
    #[serde(skip)]
    compat_upstreams: Vec<UpstreamConfig>,
    /// Listeners from registry:2 configuration (`registry_compat`).
    #[serde(skip)]
    compat_listeners: Vec<crate::registry_compat::RegistryListener>,
    #[serde(default)]
    limits: LimitsEntry,
    auth: Option<crate::trust::AuthFile>,
    tls: Option<crate::trust::TlsFile>,
    fleet: Option<crate::fleet::FleetFile>,
    /// `[policy]` with its `[[policy.rule]]` tables.
    #[serde(default)]
    policy: PolicyFile,
}

/// The `[policy]` table: the pull policy's rules, in order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<PolicyRule>,
}

/// The `[limits]` table: the server's connection policy (the upstream
/// client's caps are in `[upstream_client]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsEntry {
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
}

impl LimitsEntry {
    fn resolve(self) -> Result<ServerOptions, String> {
        let mut server = ServerOptions::default();
        if let Some(max) = self.max_connections {
            if max == 0 {
                return Err("limits.max_connections must be at least 1".to_owned());
            }
            server.max_connections = max;
        }
        if let Some(text) = self.idle_timeout {
            server.idle_timeout =
                parse_duration(&text).map_err(|e| format!("limits.idle_timeout: {e}"))?;
        }
        server
            .validate()
            .map_err(|e| format!("[limits] {}", config_message(e)))?;
        Ok(server)
    }
}

/// Everything `serve` needs, resolved and validated.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The config file read, if any.
    pub(crate) config_file: Option<PathBuf>,
    /// Where to listen (at least one), each with its default upstream.
    pub(crate) listeners: Vec<Listener>,
    /// Where `/metrics` is served instead of `listen`, if anywhere.
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) storage: StorageConfig,
    pub(crate) mirrors: MirrorConfig,
    /// The engine's options (`[cache]`, with `--tag-ttl` applied).
    pub(crate) cache: CacheOptions,
    /// The upstream client's options (`[upstream_client]`, with `--offline` applied).
    pub(crate) upstream_client: UpstreamOptions,
    /// Client authentication, when an htpasswd file is configured.
    pub(crate) client_auth: Option<ClientAuthConfig>,
    /// The serving certificate, when serving TLS from files.
    pub(crate) tls: Option<TlsFiles>,
    /// The serving certificate from an ACME CA (`[tls.acme]`).
    pub(crate) acme: Option<oci_cache_http::acme::AcmeConfig>,
    /// The server's connection policy (`[limits]`).
    pub(crate) server: ServerOptions,
    /// First path components of hosted repositories (empty: a pure cache).
    pub(crate) local_prefixes: Vec<String>,
    /// Limits of hosted repositories.
    pub(crate) hosted: HostedOptions,
    /// Fleet mode (`--advertise-url`, `--peer-secret-file`, `[fleet]`).
    pub(crate) fleet: Option<crate::fleet::FleetSettings>,
    /// The pull policy (`[[policy.rule]]`; allow everything without rules).
    pub(crate) policy: PullPolicy,
}

impl Settings {
    /// The first listening address: where one address is wanted (the
    /// health check, messages).
    pub(crate) fn primary_listen(&self) -> SocketAddr {
        self.listeners.first().map_or_else(
            || SocketAddr::from(([0, 0, 0, 0], 5000)),
            |listener| listener.addr,
        )
    }
}

/// Where a setting's value came from, so an error names the key the
/// operator actually wrote.
enum Origin<'a> {
    /// A flag or its environment variable.
    Flag {
        flag: &'static str,
        env: &'static str,
    },
    /// A key of the config file.
    File { path: &'a Path, key: &'static str },
    /// registry:2's `config.yml` or `REGISTRY_*` variables.
    Registry { key: &'static str },
    /// The built-in default.
    Default { key: &'static str },
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag { flag, env } => write!(f, "{flag} (or {env})"),
            Origin::File { path, key } => write!(f, "config file {}: {key}", path.display()),
            Origin::Registry { key } => write!(f, "registry:2 configuration: {key}"),
            Origin::Default { key } => write!(f, "default {key}"),
        }
    }
}

/// The flag's value if given, else the file's, each with where it came from.
fn pick<'a, T>(
    flag: Option<T>,
    file: Option<T>,
    path: Option<&'a Path>,
    (flag_name, env, key): (&'static str, &'static str, &'static str),
) -> Option<(T, Origin<'a>)> {
    match (flag, file, path) {
        (Some(value), _, _) => Some((
            value,
            Origin::Flag {
                flag: flag_name,
                env,
            },
        )),
        (None, Some(value), Some(path)) => Some((value, Origin::File { path, key })),
        // Without a TOML file, a file-level value came from registry:2's
        // configuration (`apply_registry_compat`).
        (None, Some(value), None) => Some((value, Origin::Registry { key })),
        (None, None, _) => None,
    }
}

/// Reads and parses a config file; errors name the file and the bad setting.
pub(crate) fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        if crate::registry_compat::looks_like_registry_config(&text) {
            return format!(
                "config file {path} is not TOML but looks like a registry:2 config.yml; \
                 run `oci-cache serve --registry-config {path}` (or name it *.yml)",
                path = path.display()
            );
        }
        match misplaced::hint(&e.to_string()) {
            Some(hint) => format!("config file {}: {e}{hint}", path.display()),
            None => format!("config file {}: {e}", path.display()),
        }
    })
}

/// The configuration as every command other than `serve` reads it: the same
/// sources and the same validation, with `serve`'s own flags at their defaults.
pub(crate) fn resolve_config(args: &ConfigArgs) -> Result<Settings, String> {
    resolve(&ServeArgs {
        config: args.clone(),
        ..ServeArgs::default()
    })
}

/// Merges flags over the file over defaults and validates the result
/// completely, without opening storage or contacting anything: what this
/// accepts, `serve` starts with (`check-config` runs exactly this).
pub(crate) fn resolve(args: &ServeArgs) -> Result<Settings, String> {
    // `--config config.yml` is registry:2's file, the one its container
    // was started with: read it as `--registry-config` would.
    if let Some(path) = args.config.config.as_deref().filter(|p| is_yaml(p)) {
        tracing::info!(file = %path.display(), "reading a .yml/.yaml --config as a registry:2 config.yml (as --registry-config does)");
        let mut args = args.clone();
        args.config.config = None;
        args.config.registry_configs.insert(0, path.to_path_buf());
        return resolve_with(&args, FileConfig::default());
    }
    let file = match args.config.config.as_deref() {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    resolve_with(args, file)
}

/// A `.yml` or `.yaml` file: registry:2's configuration, never ours (TOML).
fn is_yaml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
}

/// [`resolve`] over an already parsed file (`args.config.config` names it in
/// messages); the fuzz target's entry point, as it reads no file itself.
pub(crate) fn resolve_with(args: &ServeArgs, mut file: FileConfig) -> Result<Settings, String> {
    let sources = &args.config;
    let path = sources.config.as_deref();
    apply_registry_compat(args, &mut file)?;
    let hosted_keys = hosted::FileKeys::take(&mut file);
    let listen_sources = listeners::ListenSources {
        flag: args.listen.clone(),
        registry: std::mem::take(&mut file.compat_listeners),
        file_listen: file.listen.take(),
        file_listeners: std::mem::take(&mut file.listeners),
    };
    let metrics_listen = match pick(
        args.metrics_listen.clone(),
        file.metrics_listen.take(),
        path,
        (
            "--metrics-listen",
            "OCI_CACHE_METRICS_LISTEN",
            "metrics_listen",
        ),
    ) {
        Some((text, origin)) => Some(text.parse().map_err(|_| {
            format!("{origin}: invalid metrics address {text:?}: write it like 0.0.0.0:9090")
        })?),
        None => None,
    };

    let storage = match (&sources.storage_dir, file.storage) {
        (Some(dir), _) => StorageConfig::Filesystem { dir: dir.clone() },
        (None, Some(storage)) => storage,
        (None, None) => StorageConfig::Filesystem {
            dir: default_storage_dir(),
        },
    };
    validate_storage(&storage, path)?;

    let mut cache = file.cache.unwrap_or_default();
    // The top-level `tag_ttl` (older files) wins over `[cache] tag_ttl`.
    cache.tag_ttl = match pick(
        args.tag_ttl.clone(),
        file.tag_ttl,
        path,
        ("--tag-ttl", "OCI_CACHE_TAG_TTL", "tag_ttl"),
    ) {
        Some((text, origin)) => {
            let ttl = tag_ttl(&text).map_err(|e| format!("{origin}: {e}"))?;
            bounds::duration_in(&origin.to_string(), ttl, CacheOptions::TAG_TTL)
                .map_err(config_message)?
        }
        None if cache.tag_ttl.is_zero() => {
            return Err(format!(
                "{}: [cache] tag_ttl is zero, which would check every tag pull upstream; \
                 write a positive duration such as 30s or 5m",
                file_label(path)
            ))
        }
        None => cache.tag_ttl,
    };
    if let Some(text) = &args.max_size {
        let flag = "--max-size (OCI_CACHE_MAX_SIZE)";
        let bytes = oci_cache_core::evict::parse_size(text).map_err(|e| format!("{flag}: {e}"))?;
        let bytes = bounds::size_in(flag, bytes, CacheOptions::MAX_SIZE).map_err(config_message)?;
        cache = cache.with_max_size(bytes);
    }
    for text in &args.pins {
        let pin = text.parse().map_err(|e| format!("--pin: {e}"))?;
        cache = cache.with_pin(pin);
    }
    // Blob fills spill to anonymous temp files; keep them on the data disk,
    // not in a /tmp that may be RAM.
    if let (None, StorageConfig::Filesystem { dir }) = (&cache.spool_dir, &storage) {
        cache = cache.with_spool_dir(dir.clone());
    }
    cache
        .validate()
        .map_err(|e| format!("{}: [cache] {}", file_label(path), config_message(e)))?;
    let mut upstream_client = file.upstream_client;
    for entry in &file.upstreams {
        if let Some(budget) = entry.budget() {
            upstream_client = upstream_client.with_budget(&entry.name, budget);
        }
    }
    upstream_client.validate().map_err(|e| {
        format!(
            "{}: [upstream_client] {}",
            file_label(path),
            config_message(e)
        )
    })?;
    if args.offline {
        upstream_client = upstream_client.with_offline(true);
    }

    let mut access = BTreeMap::new();
    let mut upstreams = if !sources.upstreams.is_empty() {
        sources
            .upstreams
            .iter()
            .map(|spec| upstream_from_flag(spec))
            .collect::<Result<Vec<_>, _>>()?
    } else if !file.upstreams.is_empty() || !file.compat_upstreams.is_empty() {
        for entry in &file.upstreams {
            if let Some(chosen) = entry.access {
                access.insert(entry.name.clone(), chosen);
            }
        }
        let mut upstreams = file
            .upstreams
            .into_iter()
            .map(upstream_from_entry)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match path {
                Some(path) => format!("config file {}: [[upstream]]: {e}", path.display()),
                None => e,
            })?;
        for compat in file.compat_upstreams {
            upstreams.retain(|u| u.name != compat.name);
            upstreams.push(compat);
        }
        upstreams
    } else {
        MirrorConfig::common().upstreams
    };
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));

    let default_upstream = match pick(
        sources.default_upstream.clone(),
        file.default_upstream,
        path,
        (
            "--default-upstream",
            "OCI_CACHE_DEFAULT_UPSTREAM",
            "default_upstream",
        ),
    ) {
        Some((name, origin)) => registry(&name).map_err(|e| format!("{origin}: {e}"))?,
        None => Registry::docker_hub(),
    };
    let mut mirrors = MirrorConfig {
        upstreams,
        default_upstream,
    };
    // Imported chains come last: they name registries the flags and the
    // file may already have, and win for those.
    let mut import = Import::default();
    if let Some(path) = &sources.talos_config {
        import.extend(imports::load_talos(path)?);
    }
    if let Some(dir) = &sources.containerd_hosts {
        import.extend(imports::load_containerd_hosts(dir)?);
    }
    // Validates the merged upstreams too (names, aliases, endpoint URLs,
    // the default upstream), with or without anything imported.
    for warning in mirrors.apply_import(import).map_err(|e| e.to_string())? {
        tracing::warn!("{warning}");
    }
    mirrors.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let listeners = listeners::resolve(listen_sources, path, &mirrors)?;
    let (local_prefixes, hosted) =
        hosted::settings(args, hosted_keys, path, &mirrors, (&cache, &storage))?;
    let server = file
        .limits
        .resolve()
        .map_err(|e| format!("{}: {e}", file_label(path)))?;
    let client_auth = crate::trust::client_auth(
        (args.htpasswd.as_ref(), &args.public_upstreams),
        file.auth,
        access,
        (&mirrors, &local_prefixes),
        &storage,
    )?;
    let mut tls_file = file.tls;
    let acme = crate::trust::take_acme(
        (
            args.tls_cert.as_ref(),
            args.tls_key.as_ref(),
            args.tls_client_ca.as_ref(),
        ),
        &mut tls_file,
        &storage,
    )?;
    let tls = crate::trust::tls(
        args.tls_cert.as_ref(),
        args.tls_key.as_ref(),
        args.tls_client_ca.as_ref(),
        tls_file,
    )?;
    let fleet = crate::fleet::settings(
        (args.advertise_url.as_ref(), args.peer_secret_file.as_ref()),
        file.fleet,
        path,
        &storage,
    )?;
    let policy = PullPolicy::new(file.policy.rule).map_err(|e| {
        format!(
            "{}: [[policy.rule]] {}",
            file_label(path),
            config_message(e)
        )
    })?;
    Ok(Settings {
        fleet,
        policy,
        config_file: sources.config.clone(),
        listeners,
        metrics_listen,
        storage,
        mirrors,
        cache,
        upstream_client,
        client_auth,
        tls,
        acme,
        server,
        local_prefixes,
        hosted,
    })
}

/// Where a file-level setting came from, for messages: the config file, or
/// `config` (registry:2 settings and defaults).
pub(super) fn file_label(path: Option<&Path>) -> String {
    path.map_or_else(
        || "config".to_owned(),
        |p| format!("config file {}", p.display()),
    )
}

/// The message of a configuration error from a library's `validate`.
pub(super) fn config_message(e: oci_cache_core::Error) -> String {
    match e {
        oci_cache_core::Error::Config(message) => message,
        other => other.to_string(),
    }
}

/// A tag TTL: a duration above zero.
fn tag_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err(format!(
            "{text:?} is zero, which would check every tag pull upstream; \
             write a positive duration such as 30s or 5m"
        ));
    }
    Ok(ttl)
}

/// registry:2 drop-in: `--registry-config` files and `REGISTRY_*` variables
/// rank above the TOML file and below oci-cache's own flags; their remotes
/// join the file's upstreams, and each file's http.addr becomes a listener.
fn apply_registry_compat(args: &ServeArgs, file: &mut FileConfig) -> Result<(), String> {
    crate::registry_compat::check_env_names(std::env::vars_os().map(|(name, _)| name))?;
    let compat =
        crate::registry_compat::load(&args.config.registry_configs, &|k| std::env::var(k).ok())?;
    file.compat_listeners = compat.listeners;
    file.storage = compat.storage.or(file.storage.take());
    // The default upstream (for a listener without its own): Docker Hub
    // when one of the files proxies it, else the first file's.
    if let Some(first) = compat.upstreams.first() {
        let hub = compat
            .upstreams
            .iter()
            .any(|u| u.name == Registry::docker_hub());
        if file.default_upstream.is_none() && file.upstreams.is_empty() && !hub {
            file.default_upstream = Some(first.name.as_str().to_owned());
        }
    }
    file.compat_upstreams = compat.upstreams;
    // registry:2's serving certificate and htpasswd file, unless the TOML
    // file has its own [tls] / [auth] (flags win over both, later).
    if let (None, Some(tls)) = (&file.tls, compat.tls) {
        file.tls = Some(crate::trust::TlsFile {
            cert: tls.certificate,
            key: tls.key,
            client_ca: tls.client_ca,
            acme: tls.letsencrypt,
        });
    }
    if let (None, Some(htpasswd)) = (&file.auth, compat.htpasswd) {
        file.auth = Some(crate::trust::AuthFile {
            htpasswd: Some(htpasswd.path),
            realm: htpasswd.realm,
            ..Default::default()
        });
    }
    Ok(())
}

mod hosted;
mod imports;
mod listeners;
mod misplaced;
mod storage;
mod upstreams;

use upstreams::{registry, upstream_from_entry, upstream_from_flag, UpstreamEntry};

pub(crate) use listeners::Listener;
pub(crate) use storage::StorageConfig;
use storage::{default_storage_dir, validate_storage};
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
