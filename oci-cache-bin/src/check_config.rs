//! `oci-cache check-config`: the configuration `serve` would run with,
//! validated by the same code and printed with its secrets redacted.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;

use oci_cache_core::mirror::{Credentials, Endpoint, UpstreamConfig};
use oci_cache_http::HyperUpstream;

use crate::cli::CheckConfigArgs;
use crate::config::{self, Settings, StorageConfig, EXIT_CONFIG};
use indicatif::HumanBytes;
use oci_cache_core::duration::format_duration;

/// Shown instead of a secret.
const REDACTED: &str = "<redacted>";

pub(crate) fn run(args: &CheckConfigArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    match config::resolve(&args.serve_args()).and_then(check_upstream_client) {
        Ok(settings) => match print(out, &settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Builds the upstream client as `serve` does, which reads every endpoint's
/// TLS files (CA, client certificate and key) but connects nowhere, so a
/// missing or unreadable one fails here rather than at start-up.
fn check_upstream_client(settings: Settings) -> Result<Settings, String> {
    let mirrors = Arc::new(settings.mirrors.clone());
    HyperUpstream::new(mirrors, settings.upstream_client.clone()).map_err(|e| e.to_string())?;
    Ok(settings)
}

/// The effective settings, one per line, as `serve` would use them.
fn print(out: &mut impl Write, settings: &Settings) -> io::Result<()> {
    match &settings.config_file {
        Some(path) => writeln!(out, "{}: ok", path.display())?,
        None => writeln!(
            out,
            "no config file: ok (defaults, flags and OCI_CACHE_* variables)"
        )?,
    }
    for listener in &settings.listeners {
        writeln!(out, "listen: {listener}")?;
    }
    if let Some(addr) = settings.metrics_listen {
        writeln!(
            out,
            "metrics listen: {addr} (/metrics is not served on the listeners above)"
        )?;
    }
    writeln!(out, "storage: {}", describe_storage(&settings.storage))?;
    writeln!(out, "tag ttl: {}", format_duration(settings.cache.tag_ttl))?;
    writeln!(out, "offline: {}", settings.upstream_client.offline)?;
    writeln!(
        out,
        "default upstream: {}",
        settings.mirrors.default_upstream
    )?;
    for upstream in &settings.mirrors.upstreams {
        writeln!(out, "{}", describe_upstream(upstream))?;
    }
    if !settings.local_prefixes.is_empty() {
        writeln!(
            out,
            "hosted (push): {} (abandoned uploads removed after {})",
            settings
                .local_prefixes
                .iter()
                .map(|p| format!("{p}/…"))
                .collect::<Vec<_>>()
                .join(", "),
            format_duration(settings.hosted.upload_max_age)
        )?;
        let hosted = &settings.hosted;
        let bytes =
            |limit: Option<u64>| limit.map_or("no limit".to_owned(), |b| HumanBytes(b).to_string());
        writeln!(
            out,
            "push limits: {} open uploads per client, {} held by open uploads in all, blobs up to {}",
            hosted.max_uploads_per_client,
            bytes(hosted.max_upload_bytes),
            bytes(hosted.max_blob_size),
        )?;
    }
    for line in crate::trust::describe(
        (settings.tls.as_ref(), settings.acme.as_ref()),
        settings.client_auth.as_ref(),
        (&settings.mirrors, &settings.local_prefixes),
    ) {
        writeln!(out, "{line}")?;
    }
    match &settings.fleet {
        Some(fleet) => writeln!(
            out,
            "fleet: advertised as {}, peer secret read",
            fleet.advertise_url
        )?,
        None => writeln!(out, "fleet: off (one replica on its own)")?,
    }
    write!(out, "{}", tunables_toml(settings))?;
    Ok(())
}

/// Every knob of `[cache]` and `[upstream_client]` in effect, as the TOML
/// that sets them (a proxy URL's password as `***`): what to copy into a
/// config file to change one.
fn tunables_toml(settings: &Settings) -> String {
    #[derive(serde::Serialize)]
    struct Tunables<'a> {
        cache: &'a oci_cache_core::cache::CacheOptions,
        upstream_client: &'a oci_cache_http::UpstreamOptions,
    }
    let tunables = Tunables {
        cache: &settings.cache,
        upstream_client: &settings.upstream_client,
    };
    match toml::to_string(&tunables) {
        Ok(text) => format!("\n# in effect (config file syntax)\n{text}"),
        // Only a type serde's TOML cannot write (none today) gets here.
        Err(e) => format!("[cache] and [upstream_client]: cannot be shown ({e})\n"),
    }
}

fn describe_storage(storage: &StorageConfig) -> String {
    match storage {
        StorageConfig::Filesystem { dir } => format!("filesystem at {}", dir.display()),
        StorageConfig::Memory {} => "memory (gone at exit)".to_owned(),
        StorageConfig::S3(s3) => {
            let mut text = format!(
                "s3 bucket {} at {}",
                s3.bucket,
                s3.endpoint.as_deref().unwrap_or("AWS")
            );
            if let Some(region) = &s3.region {
                text.push_str(&format!(", region {region}"));
            }
            if let Some(prefix) = &s3.prefix {
                text.push_str(&format!(", prefix {prefix}"));
            }
            if s3.path_style {
                text.push_str(", path style");
            }
            let credentials = [
                ("access_key_id", &s3.access_key_id),
                ("secret_access_key", &s3.secret_access_key),
                ("session_token", &s3.session_token),
            ];
            for (key, value) in credentials {
                if value.is_some() {
                    text.push_str(&format!(", {key} {REDACTED}"));
                }
            }
            text
        }
    }
}

/// `upstream NAME: URL -> URL`, with aliases and who is authenticated where.
fn describe_upstream(upstream: &UpstreamConfig) -> String {
    let chain: Vec<String> = upstream
        .chain()
        .into_iter()
        .map(describe_endpoint)
        .collect();
    let mut text = format!("upstream {}: {}", upstream.name, chain.join(" -> "));
    if !upstream.aliases.is_empty() {
        text.push_str(&format!(" (aliases: {})", upstream.aliases.join(", ")));
    }
    text
}

fn describe_endpoint(endpoint: &Endpoint) -> String {
    let mut text = endpoint.url.clone();
    if !endpoint.resolve {
        text.push_str(" [digests only]");
    }
    if let Some(Credentials { username, .. }) = &endpoint.credentials {
        text.push_str(&format!(" [user {username}, password {REDACTED}]"));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use oci_cache_core::storage::S3Config;

    #[test]
    fn secrets_are_redacted() {
        let s3 = StorageConfig::S3(S3Config {
            bucket: "b".into(),
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("s3cr3t".into()),
            ..S3Config::default()
        });
        let text = describe_storage(&s3);
        assert!(
            !text.contains("s3cr3t") && !text.contains("AKIAEXAMPLE"),
            "{text}"
        );
        assert!(text.contains("secret_access_key <redacted>"), "{text}");

        let endpoint = Endpoint::new("https://m.example").with_credentials("me", "hunter2");
        let text = describe_endpoint(&endpoint);
        assert_eq!(text, "https://m.example [user me, password <redacted>]");
    }
}
