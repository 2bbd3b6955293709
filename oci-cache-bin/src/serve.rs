//! `oci-cache serve` and `oci-cache check-config`: wiring config to the library.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use oci_cache_http::AppState;
use tokio::net::TcpListener;

use crate::cli::{CheckConfigArgs, ServeArgs};
use crate::config::{self, Settings, StorageConfig};
use crate::engine::{self, BoxError, EXIT_CONFIG};

pub(crate) fn run(args: &ServeArgs, err: &mut impl Write) -> ExitCode {
    engine::run(args, err, |settings| async move {
        serve(settings).await.map(|()| ExitCode::SUCCESS)
    })
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

async fn serve(settings: Settings) -> Result<(), BoxError> {
    let (engine, mirrors) = engine::build(&settings).await?;
    let storage_name = engine.storage().to_string();
    let engine = Arc::new(engine);
    let service = oci_cache_http::service(AppState::new(engine, mirrors.clone()));
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
        "oci-cache serving"
    );
    oci_cache_http::serve(listener, service, shutdown_signal()).await?;
    tracing::info!("oci-cache stopped");
    Ok(())
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
