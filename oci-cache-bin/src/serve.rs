//! `oci-cache serve`: wiring config to the library.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use oci_cache_http::client_auth::{self, AuthService, ClientAuth};
use oci_cache_http::{tls_server, AccessLog};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::config::Settings;
use crate::engine::{self, BoxError};

pub(crate) fn run(args: &ServeArgs, err: &mut impl Write) -> ExitCode {
    engine::run(args, err, |settings| async move {
        serve(settings).await.map(|()| ExitCode::SUCCESS)
    })
}

async fn serve(settings: Settings) -> Result<(), BoxError> {
    let mirror = engine::builder(&settings)
        .await?
        .observer(Arc::new(AccessLog))
        .build()?;
    let service = mirror.service();
    let storage_name = service.engine().storage().to_string();
    // Owned: the service moves into the auth wrapper below.
    let mirrors = service.mirrors().clone();
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let upstreams: Vec<&str> = mirrors.upstreams.iter().map(|u| u.name.as_str()).collect();
    tracing::info!(
        listen = %settings.listen,
        storage = %storage_name,
        upstreams = %upstreams.join(","),
        default_upstream = %mirrors.default_upstream,
        tag_ttl = ?settings.cache.tag_ttl,
        offline = settings.upstream_client.offline,
        client_auth = settings.client_auth.is_some(),
        tls = settings.tls.is_some(),
        "oci-cache serving"
    );
    let tls = match &settings.tls {
        Some(files) => Some(tls_server::acceptor(files)?),
        None => None,
    };
    match &settings.client_auth {
        Some(config) => {
            let auth = Arc::new(ClientAuth::new(config, &mirrors)?);
            let service = AuthService::new(service, auth);
            oci_cache_http::serve_tls(listener, service, tls, shutdown_signal()).await?;
        }
        None => {
            for name in client_auth::exposed_credentialed_upstreams(&mirrors) {
                tracing::warn!(upstream = %name,
                    "upstream {name} has credentials but client authentication is off: anyone who reaches the port can read it through them; set --htpasswd");
            }
            oci_cache_http::serve_tls(listener, service, tls, shutdown_signal()).await?;
        }
    }
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
