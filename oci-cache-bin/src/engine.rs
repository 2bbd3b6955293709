//! What every command that touches the cache shares with `serve`: settings
//! from the same flags and config file, the same storage, the same upstream
//! client and the same `PullThrough` engine.

use std::error::Error as StdError;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::storage::Storage;
use oci_cache_http::{Mirror, MirrorBuilder};

use crate::cli::ServeArgs;
use crate::config::{self, Settings, StorageConfig, EXIT_CONFIG};

/// Any error, with its chain of causes.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The engine as `serve` runs it: type-erased storage and upstream.
pub(crate) use oci_cache_http::Engine;

/// Resolves the settings of `args`, runs `command` on a multi-threaded tokio
/// runtime and turns its outcome into the exit status; errors are printed
/// as `error: …` / `caused by: …` lines.
pub(crate) fn run<F>(
    args: &ServeArgs,
    err: &mut impl Write,
    command: impl FnOnce(Settings) -> F,
) -> ExitCode
where
    F: Future<Output = Result<ExitCode, BoxError>>,
{
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
    match runtime.block_on(command(settings)) {
        Ok(code) => code,
        Err(e) => {
            print_chain(err, e.as_ref());
            // No certificate to serve is a setup problem like a bad
            // configuration, not a crash: the same status.
            match e.downcast_ref::<oci_cache_http::Error>() {
                Some(oci_cache_http::Error::Acme(_)) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Writes `error: …` and one `caused by: …` line per source.
pub(crate) fn print_chain(err: &mut impl Write, e: &(dyn StdError + 'static)) {
    let _ = writeln!(err, "error: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = writeln!(err, "caused by: {cause}");
        source = cause.source();
    }
}

/// Opens the configured storage backend.
pub(crate) async fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, BoxError> {
    use oci_cache_core::storage::{FsStorage, MemoryStorage, ObjectStorage};
    Ok(match config {
        StorageConfig::Filesystem { dir } => Arc::new(FsStorage::open(dir).await?),
        StorageConfig::Memory {} => Arc::new(MemoryStorage::new()),
        StorageConfig::S3(s3) => Arc::new(ObjectStorage::s3(s3)?),
    })
}

/// The mirror `settings` describe (storage opened, upstream client and
/// engine options set), ready for `serve` to add its observers.
pub(crate) async fn builder(settings: &Settings) -> Result<MirrorBuilder, BoxError> {
    let storage = open_storage(&settings.storage).await?;
    Ok(builder_over(settings, storage))
}

/// [`builder`] over a storage already opened (`serve` shares it with the
/// readiness probe and the store count).
pub(crate) fn builder_over(settings: &Settings, storage: Arc<dyn Storage>) -> MirrorBuilder {
    settings_builder(settings).storage(storage)
}

/// The mirror `settings` describe, without its storage (a reload keeps the
/// running one).
pub(crate) fn settings_builder(settings: &Settings) -> MirrorBuilder {
    Mirror::builder()
        .upstreams(settings.mirrors.clone())
        .cache_options(settings.cache.clone())
        .upstream_options(settings.upstream_client.clone())
        .local_prefixes(settings.local_prefixes.clone())
        .hosted_options(settings.hosted.clone())
        .pull_policy(settings.policy.clone())
}

/// The engine `settings` describe, and the mirror configuration it routes by
/// (for the commands that use the engine without serving it).
pub(crate) async fn build(settings: &Settings) -> Result<(Engine, Arc<MirrorConfig>), BoxError> {
    let service = builder(settings).await?.build()?.service();
    Ok((
        service.engine().clone(),
        Arc::new(service.mirrors().clone()),
    ))
}
