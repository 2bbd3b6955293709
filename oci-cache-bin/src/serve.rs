//! `oci-cache serve` and `oci-cache check-config`: wiring config to the library.

use std::error::Error as StdError;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use oci_cache_core::cache::CacheOptions;
use oci_cache_core::storage::Storage;
use oci_cache_http::{AccessLog, Mirror, UpstreamOptions};
use tokio::net::TcpListener;

use crate::cli::{CheckConfigArgs, ServeArgs};
use crate::config::{self, Settings, StorageConfig};

/// Exit status for configuration the program cannot use.
const EXIT_CONFIG: u8 = 2;

type BoxError = Box<dyn StdError + Send + Sync>;

pub(crate) fn run(args: &ServeArgs, err: &mut impl Write) -> ExitCode {
    let settings = match config::resolve(args) {
        Ok(settings) => settings,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_chain(err, e.as_ref());
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn check_config(
    args: &CheckConfigArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> ExitCode {
    let serve_args = ServeArgs {
        config: Some(args.file.clone()),
        ..ServeArgs::default()
    };
    match config::resolve(&serve_args) {
        Ok(settings) => {
            let _ = writeln!(out, "{}: ok", args.file.display());
            let _ = writeln!(out, "listen: {}", settings.listen);
            let _ = writeln!(out, "storage: {}", describe_storage(&settings.storage));
            let _ = writeln!(out, "tag ttl: {:?}", settings.tag_ttl);
            let _ = writeln!(
                out,
                "default upstream: {}",
                settings.mirrors.default_upstream
            );
            for upstream in &settings.mirrors.upstreams {
                let chain: Vec<&str> = upstream.chain().iter().map(|e| e.url.as_str()).collect();
                let _ = writeln!(out, "upstream {}: {}", upstream.name, chain.join(" -> "));
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn describe_storage(storage: &StorageConfig) -> String {
    match storage {
        StorageConfig::Filesystem { dir } => format!("filesystem at {}", dir.display()),
        StorageConfig::Memory => "memory".to_owned(),
        StorageConfig::S3(s3) => format!(
            "s3 bucket {} at {}",
            s3.bucket,
            s3.endpoint.as_deref().unwrap_or("AWS")
        ),
    }
}

fn print_chain(err: &mut impl Write, e: &(dyn StdError + 'static)) {
    let _ = writeln!(err, "error: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = writeln!(err, "caused by: {cause}");
        source = cause.source();
    }
}

async fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, BoxError> {
    use oci_cache_core::storage::{FsStorage, MemoryStorage, ObjectStorage};
    Ok(match config {
        StorageConfig::Filesystem { dir } => Arc::new(FsStorage::open(dir).await?),
        StorageConfig::Memory => Arc::new(MemoryStorage::new()),
        StorageConfig::S3(s3) => Arc::new(ObjectStorage::s3(s3)?),
    })
}

async fn serve(settings: Settings) -> Result<(), BoxError> {
    let storage = open_storage(&settings.storage).await?;
    raise_fd_limit();
    let upstream_options = UpstreamOptions::default()
        .with_offline(settings.offline)
        .with_max_tag_list_bytes(settings.limits.max_tag_list_bytes)
        .with_max_tags(settings.limits.max_tags);
    let mut options = CacheOptions::default().with_tag_ttl(settings.tag_ttl);
    // Blob fills spill to anonymous temp files; keep them on the data disk,
    // not in a /tmp that may be RAM.
    if let StorageConfig::Filesystem { dir } = &settings.storage {
        options = options.with_spool_dir(dir.clone());
    }
    let storage_name = storage.to_string();
    let mirror = Mirror::builder()
        .upstreams(settings.mirrors)
        .storage(storage)
        .cache_options(options)
        .upstream_options(upstream_options)
        .observer(Arc::new(AccessLog))
        .build()?;
    let service = mirror.service();
    let mirrors = service.mirrors();
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let upstreams: Vec<&str> = mirrors.upstreams.iter().map(|u| u.name.as_str()).collect();
    tracing::info!(
        listen = %settings.listen,
        storage = %storage_name,
        upstreams = %upstreams.join(","),
        default_upstream = %mirrors.default_upstream,
        tag_ttl = ?settings.tag_ttl,
        offline = settings.offline,
        max_connections = settings.limits.server.max_connections,
        "oci-cache serving"
    );
    oci_cache_http::serve_with(
        listener,
        service,
        settings.limits.server.clone(),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("oci-cache stopped");
    Ok(())
}

/// Raises the open-file soft limit to the hard limit: every client
/// connection is a descriptor, and the usual soft limit of 1024 would make
/// `accept` fail long before `limits.max_connections`. Returns the soft
/// limit now in force (`None`: unknown or unlimited).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit");
            }
            Err(e) => {
                tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open-file limit; clients beyond it are refused");
                return limit.current;
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Resolves on SIGINT or SIGTERM, so in-flight requests can finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        // Start below the hard limit, as a default 1024 soft limit does.
        let low = before.maximum.map_or(1024, |max| max.min(1024) / 2);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: before.maximum,
            },
        )
        .unwrap();
        assert_eq!(super::raise_fd_limit(), before.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, before.maximum);
    }
}
