//! Hosted repositories' settings: `--local-prefix` / `local_prefixes` and
//! `upload_max_age`.

use std::path::Path;

use oci_cache_core::cache::CacheOptions;
use oci_cache_core::duration::parse_duration;
use oci_cache_core::hosted::HostedOptions;
use oci_cache_core::mirror::MirrorConfig;

use super::pick;
use crate::cli::ServeArgs;

/// `--local-prefix` / `local_prefixes` and `upload_max_age`, validated.
pub(super) fn settings(
    args: &ServeArgs,
    (file_prefixes, upload_max_age): (Option<Vec<String>>, Option<String>),
    path: Option<&Path>,
    mirrors: &MirrorConfig,
    cache: &CacheOptions,
) -> Result<(Vec<String>, HostedOptions), String> {
    let flags = (!args.local_prefixes.is_empty()).then(|| args.local_prefixes.clone());
    let prefixes = match pick(
        flags,
        file_prefixes,
        path,
        (
            "--local-prefix",
            "OCI_CACHE_LOCAL_PREFIXES",
            "local_prefixes",
        ),
    ) {
        Some((prefixes, origin)) => {
            for prefix in &prefixes {
                oci_cache_core::hosted::validate_local_prefix(prefix, mirrors)
                    .map_err(|e| format!("{origin}: {e}"))?;
            }
            prefixes
        }
        None => Vec::new(),
    };
    let mut hosted = HostedOptions::default()
        .with_max_manifest_size(cache.max_manifest_size)
        .with_max_blob_size(Some(cache.max_blob_size));
    if let Some(text) = upload_max_age {
        let age = parse_duration(&text).map_err(|e| format!("upload_max_age: {e}"))?;
        hosted = hosted.with_upload_max_age(age);
    }
    hosted
        .validate()
        .map_err(|e| format!("{}: {}", super::file_label(path), super::config_message(e)))?;
    Ok((prefixes, hosted))
}
