//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A pull-through cache for OCI container registries.
#[derive(Debug, Parser)]
#[command(name = "oci-cache", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log filter, e.g. `info` or `oci_cache_http=debug` (RUST_LOG works too).
    #[arg(long, global = true, env = "OCI_CACHE_LOG")]
    pub(crate) log: Option<String>,

    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "OCI_CACHE_LOG_JSON")]
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
    /// Check a configuration file and print the effective settings.
    CheckConfig(CheckConfigArgs),
}

/// Settings for `serve`; each overrides the config file.
#[derive(Debug, Args, Default)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML); see `oci-cache.example.toml`.
    #[arg(long, env = "OCI_CACHE_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "OCI_CACHE_LISTEN")]
    pub(crate) listen: Option<String>,

    /// Directory of the filesystem storage.
    #[arg(long, env = "OCI_CACHE_STORAGE_DIR")]
    pub(crate) storage_dir: Option<PathBuf>,

    /// An upstream as NAME=URL (repeatable); replaces the default upstreams.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub(crate) upstreams: Vec<String>,

    /// The upstream for requests that name none (default docker.io).
    #[arg(long, env = "OCI_CACHE_DEFAULT_UPSTREAM")]
    pub(crate) default_upstream: Option<String>,

    /// How long a cached tag is trusted before it is checked upstream, e.g. `30s`, `5m`, `1h`.
    #[arg(long, env = "OCI_CACHE_TAG_TTL")]
    pub(crate) tag_ttl: Option<String>,

    /// Talos machine configuration (YAML) whose RegistryMirrorConfig,
    /// RegistryAuthConfig and RegistryTLSConfig documents add upstreams and chains.
    #[arg(long, env = "OCI_CACHE_TALOS_CONFIG", value_name = "FILE")]
    pub(crate) talos_config: Option<PathBuf>,

    /// containerd registry host directory (a `certs.d` tree of
    /// `<registry>/hosts.toml`) that adds upstreams and chains.
    #[arg(long, env = "OCI_CACHE_CONTAINERD_HOSTS", value_name = "DIR")]
    pub(crate) containerd_hosts: Option<PathBuf>,

    /// Serve only what is cached; never contact an upstream.
    #[arg(long, env = "OCI_CACHE_OFFLINE")]
    pub(crate) offline: bool,

    /// htpasswd file (bcrypt, `htpasswd -B`) of the clients allowed to read
    /// non-public upstreams; turns on client authentication.
    #[arg(long, env = "OCI_CACHE_HTPASSWD", value_name = "FILE")]
    pub(crate) htpasswd: Option<PathBuf>,

    /// PEM certificate chain to serve TLS with (re-read when it changes); needs --tls-key.
    #[arg(long, env = "OCI_CACHE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "OCI_CACHE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,

    /// PEM CA certificates; clients must present a certificate signed by one.
    #[arg(long, env = "OCI_CACHE_TLS_CLIENT_CA", value_name = "FILE")]
    pub(crate) tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    /// The reference, e.g. `alpine`, `ghcr.io/org/app:v1`, `nginx@sha256:…`.
    pub(crate) reference: String,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// Configuration file (TOML) whose upstreams the reference is routed by.
    #[arg(long, env = "OCI_CACHE_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// An upstream as NAME=URL (repeatable); replaces the default upstreams.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub(crate) upstreams: Vec<String>,

    /// The upstream for requests that name none (default docker.io).
    #[arg(long, env = "OCI_CACHE_DEFAULT_UPSTREAM")]
    pub(crate) default_upstream: Option<String>,

    /// Talos machine configuration (YAML) with registry documents, as for `serve`.
    #[arg(long, env = "OCI_CACHE_TALOS_CONFIG", value_name = "FILE")]
    pub(crate) talos_config: Option<PathBuf>,

    /// containerd `certs.d` directory of `hosts.toml` files, as for `serve`.
    #[arg(long, env = "OCI_CACHE_CONTAINERD_HOSTS", value_name = "DIR")]
    pub(crate) containerd_hosts: Option<PathBuf>,
}

impl ResolveArgs {
    /// The `serve` settings that decide routing, so that both commands read
    /// configuration through the one `config::resolve`.
    pub(crate) fn serve_args(&self) -> ServeArgs {
        ServeArgs {
            config: self.config.clone(),
            upstreams: self.upstreams.clone(),
            default_upstream: self.default_upstream.clone(),
            talos_config: self.talos_config.clone(),
            containerd_hosts: self.containerd_hosts.clone(),
            ..ServeArgs::default()
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct CheckConfigArgs {
    /// The configuration file to check.
    pub(crate) file: PathBuf,
}
