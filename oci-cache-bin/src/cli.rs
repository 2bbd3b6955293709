//! Command-line arguments.
//!
//! Every subcommand that reads the configuration flattens [`ConfigArgs`], so
//! `--config`, `--upstream` and the other sources (and their `OCI_CACHE_*`
//! variables) mean the same everywhere and are declared once.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

/// A pull-through cache for OCI container registries.
#[derive(Debug, Parser)]
#[command(name = "oci-cache", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log filter, e.g. `info` or `oci_cache_http=debug` (RUST_LOG works too).
    #[arg(long, global = true, env = "OCI_CACHE_LOG")]
    pub(crate) log: Option<String>,

    /// Log as JSON lines instead of text (env: 1/0, true/false, yes/no, on/off).
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_LOG_JSON",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub(crate) log_json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the mirror (defaults: 0.0.0.0:5000, ./oci-cache-data, the five common upstreams).
    Serve(ServeArgs),
    /// Parse an image reference and print its canonical and familiar forms.
    Resolve(ResolveArgs),
    /// Validate the configuration exactly as `serve` would and print the effective settings.
    CheckConfig(CheckConfigArgs),
    /// Print or write the configuration that points a client (containerd,
    /// talos, docker, podman, buildkit, kind, k3s) at this mirror.
    ClientConfig(crate::client_config::ClientConfigArgs),
    /// Check that this node's container runtimes pull through the mirror
    /// (exit 0), or say why not and how to fix it.
    Doctor(crate::doctor::DoctorArgs),
    /// Exit 0 when the mirror's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
    /// Fill the cache with images (all platforms of an index, or --platform) ahead of time.
    Warm(WarmArgs),
    /// Check that images are fully in the cache and every byte matches its digest.
    Verify(VerifyArgs),
    /// Write cached images as an OCI image layout (a directory, or --tar FILE).
    Export(ExportArgs),
    /// Load an OCI image layout (directory or --tar FILE), or a registry:2
    /// container's storage (--registry2-dir), into the cache, every blob verified.
    Import(ImportArgs),
    /// Remove images from the cache (tag, manifests, blobs no other image uses) so the next pull is a miss.
    Purge(PurgeArgs),
    /// Run one eviction pass now: down to 90 % of --max-size, keeping pinned images.
    Gc(GcArgs),
    /// registry:2's command line: `registry serve config.yml` runs `serve
    /// --registry-config config.yml`.
    Registry(RegistryArgs),
}

/// `oci-cache registry …`, as a registry:2 container is started
/// (`registry serve /etc/docker/registry/config.yml`).
#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    #[command(subcommand)]
    pub(crate) command: RegistryCommand,
}

/// The registry:2 subcommands oci-cache answers.
#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// `serve --registry-config FILE`.
    Serve {
        /// The registry:2 `config.yml`.
        #[arg(value_name = "CONFIG.YML")]
        file: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

impl RegistryCommand {
    /// The `serve` arguments this stands for.
    pub(crate) fn serve_args(&self) -> ServeArgs {
        match self {
            RegistryCommand::Serve { file, serve } => {
                let mut args = serve.clone();
                args.config.registry_configs.insert(0, file.clone());
                args
            }
        }
    }
}

/// Where the configuration comes from: the file, and the flags and
/// variables that override it. Flatten this into every subcommand that
/// reads the configuration.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct ConfigArgs {
    /// Configuration file (TOML); see `oci-cache.example.toml`.
    #[arg(long, env = "OCI_CACHE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Directory of the filesystem storage (selects filesystem storage).
    #[arg(long, env = "OCI_CACHE_STORAGE_DIR", value_name = "DIR")]
    pub(crate) storage_dir: Option<PathBuf>,

    /// An upstream as NAME=URL (repeatable); replaces the default upstreams.
    /// (`import --registry2-dir` also takes a bare NAME: the upstream the
    /// imported repositories belong to.)
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub(crate) upstreams: Vec<String>,

    /// The upstream for requests that name none (default docker.io).
    #[arg(long, env = "OCI_CACHE_DEFAULT_UPSTREAM", value_name = "NAME")]
    pub(crate) default_upstream: Option<String>,

    /// Talos machine configuration (YAML) whose RegistryMirrorConfig,
    /// RegistryAuthConfig and RegistryTLSConfig documents add upstreams and chains.
    #[arg(long, env = "OCI_CACHE_TALOS_CONFIG", value_name = "FILE")]
    pub(crate) talos_config: Option<PathBuf>,

    /// containerd registry host directory (a `certs.d` tree of
    /// `<registry>/hosts.toml`) that adds upstreams and chains.
    #[arg(long, env = "OCI_CACHE_CONTAINERD_HOSTS", value_name = "DIR")]
    pub(crate) containerd_hosts: Option<PathBuf>,

    /// A registry:2 `config.yml` (repeatable): its `proxy`, `http`,
    /// `auth.htpasswd` and `storage` sections configure this mirror.
    #[arg(long = "registry-config", value_name = "FILE")]
    pub(crate) registry_configs: Vec<PathBuf>,
}

/// Settings for `serve`; each overrides the config file.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,

    /// Address to listen on.
    #[arg(long, env = "OCI_CACHE_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,

    /// Serve `/metrics` on this address instead of the main listener
    /// (which then answers 404 there).
    #[arg(long, env = "OCI_CACHE_METRICS_LISTEN", value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,

    /// Host the repositories under this first path component (`local` hosts
    /// `local/app`): they accept pushes and are never fetched upstream.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "local-prefix",
        env = "OCI_CACHE_LOCAL_PREFIXES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub(crate) local_prefixes: Vec<String>,

    /// Upload sessions one client address may hold open at once (default 64).
    #[arg(long, env = "OCI_CACHE_MAX_UPLOADS_PER_CLIENT", value_name = "N")]
    pub(crate) max_uploads_per_client: Option<usize>,

    /// Bytes all open upload sessions may hold together, e.g. `20GiB`
    /// (default: the per-blob push limit, which follows the disk).
    #[arg(long, env = "OCI_CACHE_MAX_UPLOAD_BYTES", value_name = "SIZE")]
    pub(crate) max_upload_bytes: Option<String>,

    /// How long a cached tag is trusted before it is checked upstream, e.g. `30s`, `5m`, `1h`.
    #[arg(long, env = "OCI_CACHE_TAG_TTL", value_name = "DURATION")]
    pub(crate) tag_ttl: Option<String>,

    /// Cap on stored blob bytes, e.g. `150MiB`, `50GiB`: least recently used
    /// blobs are evicted down to 90 % of it (see docs/operations.md, "Bounded disk").
    #[arg(long, env = "OCI_CACHE_MAX_SIZE", value_name = "SIZE")]
    pub(crate) max_size: Option<String>,

    /// Never evict images matching this `upstream/repository:tag` glob, e.g.
    /// `docker.io/library/alpine:*` or `registry.k8s.io/*` (repeatable; added
    /// to `[cache] pin`).
    #[arg(long = "pin", value_name = "PATTERN")]
    pub(crate) pins: Vec<String>,

    /// Serve only what is cached; never contact an upstream
    /// (env: 1/0, true/false, yes/no, on/off).
    #[arg(
        long,
        env = "OCI_CACHE_OFFLINE",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub(crate) offline: bool,

    /// htpasswd file (bcrypt, `htpasswd -B`) of the clients allowed to read
    /// the mirror; turns on client authentication, which protects every
    /// upstream and hosted repository not made public.
    #[arg(long, env = "OCI_CACHE_HTPASSWD", value_name = "FILE")]
    pub(crate) htpasswd: Option<PathBuf>,

    /// With --htpasswd, serve this upstream (or local prefix) to anonymous
    /// clients too, e.g. `docker.io` for Docker daemons, which send no
    /// credentials to a registry mirror. Repeatable; the environment
    /// variable takes a comma-separated list.
    #[arg(
        long = "public-upstream",
        env = "OCI_CACHE_PUBLIC_UPSTREAMS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub(crate) public_upstreams: Vec<String>,

    /// PEM certificate chain to serve TLS with (re-read when it changes); needs --tls-key.
    #[arg(long, env = "OCI_CACHE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "OCI_CACHE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,

    /// PEM CA certificates; clients must present a certificate signed by one.
    #[arg(long, env = "OCI_CACHE_TLS_CLIENT_CA", value_name = "FILE")]
    pub(crate) tls_client_ca: Option<PathBuf>,

    /// Fleet mode: the URL the other replicas on the same bucket reach this
    /// one at, e.g. `http://10.0.0.7:5000`; needs --peer-secret-file and S3 storage.
    #[arg(long, env = "OCI_CACHE_ADVERTISE_URL", value_name = "URL")]
    pub(crate) advertise_url: Option<String>,

    /// Fleet mode: the file holding the secret every replica shares (not
    /// readable by every user); needs --advertise-url.
    #[arg(long, env = "OCI_CACHE_PEER_SECRET_FILE", value_name = "FILE")]
    pub(crate) peer_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    /// The reference, e.g. `alpine`, `ghcr.io/org/app:v1`, `nginx@sha256:…`.
    pub(crate) reference: String,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

/// `check-config` takes everything `serve` takes, so it sees what `serve` would.
#[derive(Debug, Args)]
pub(crate) struct CheckConfigArgs {
    /// The configuration file to check (the same as `--config FILE`, and wins over it).
    #[arg(value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

impl CheckConfigArgs {
    /// The `serve` arguments being checked, with `FILE` as the config file.
    pub(crate) fn serve_args(&self) -> ServeArgs {
        let mut args = self.serve.clone();
        if let Some(file) = &self.file {
            args.config.config = Some(file.clone());
        }
        args
    }
}

/// Which images an air-gap command works on.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Image references (`alpine`, `ghcr.io/org/app:v1`, `nginx@sha256:…`).
    #[arg(value_name = "REF")]
    pub(crate) refs: Vec<String>,

    /// A file of references, one per line, `#` comments (`-` reads stdin),
    /// e.g. the output of `talosctl images default` or `kubeadm config images list`.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,

    /// Only this platform of a multi-platform image, e.g. `linux/amd64`
    /// (repeatable; default: every platform).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub(crate) platforms: Vec<String>,
}

/// `oci-cache warm`.
#[derive(Debug, Args)]
pub(crate) struct WarmArgs {
    #[command(flatten)]
    pub(crate) list: ListArgs,

    /// Images fetched at the same time (also the limit on concurrent blob downloads), 1 to 256.
    #[arg(short = 'j', long, default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) jobs: u16,

    /// Resolve each image upstream and print what would be fetched; store nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `oci-cache verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) list: ListArgs,

    /// Refetch what is missing or corrupt from upstream (otherwise storage is only read).
    #[arg(long)]
    pub(crate) repair: bool,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `oci-cache export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) list: ListArgs,

    /// The OCI image layout directory to write (created; images already in it are kept).
    #[arg(short = 'o', long, value_name = "DIR", required_unless_present = "tar")]
    pub(crate) output: Option<PathBuf>,

    /// Write the layout as one tar file instead of a directory.
    #[arg(long, value_name = "FILE", conflicts_with = "output")]
    pub(crate) tar: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `oci-cache import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The OCI image layout directory to read.
    #[arg(
        value_name = "DIR",
        required_unless_present_any = ["tar", "registry2_dir", "registry2_config"]
    )]
    pub(crate) dir: Option<PathBuf>,

    /// Read the layout from a tar file instead of a directory.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dir", "registry2_dir", "registry2_config"])]
    pub(crate) tar: Option<PathBuf>,

    /// Adopt a registry:2 container's cache: its storage directory (the
    /// `/var/lib/registry` volume). Its repositories go to the default
    /// upstream, to `--upstream NAME`, or to the upstream `--registry2-config`
    /// proxies.
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    pub(crate) registry2_dir: Option<PathBuf>,

    /// The `config.yml` of the registry:2 container whose storage is
    /// imported: its `proxy.remoteurl` names the upstream (which must be
    /// configured here), its `storage.filesystem.rootdirectory` the
    /// directory when `--registry2-dir` is not given.
    #[arg(long, value_name = "FILE", conflicts_with = "dir")]
    pub(crate) registry2_config: Option<PathBuf>,

    /// For layouts that name images by tag only (`skopeo copy … oci:DIR:v1`):
    /// the repository they belong to, e.g. `ghcr.io/org/app`.
    #[arg(long, value_name = "REGISTRY/REPOSITORY")]
    pub(crate) repository: Option<String>,

    /// Only this platform of a multi-platform image (repeatable; default: every platform).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub(crate) platforms: Vec<String>,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `oci-cache purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Images to remove, e.g. `alpine:3.20`, `ghcr.io/org/app:v1`, `nginx@sha256:…`
    /// (no tag means `:latest`).
    #[arg(value_name = "REF", required = true)]
    pub(crate) refs: Vec<String>,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `oci-cache gc`.
#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}
