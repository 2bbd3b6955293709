//! Hosted repositories' settings: `--local-prefix` / `local_prefixes`,
//! `upload_max_age`, and the limits on pushes that follow the disk.

use std::path::Path;

use oci_cache_core::cache::CacheOptions;
use oci_cache_core::duration::parse_duration;
use oci_cache_core::evict::parse_size;
use oci_cache_core::hosted::HostedOptions;
use oci_cache_core::mirror::MirrorConfig;

use super::{pick, FileConfig, StorageConfig};
use crate::cli::ServeArgs;

/// The file's keys for hosted repositories, taken out of it whole.
pub(super) struct FileKeys {
    local_prefixes: Option<Vec<String>>,
    upload_max_age: Option<String>,
    max_uploads_per_client: Option<usize>,
    max_upload_bytes: Option<String>,
}

impl FileKeys {
    pub(super) fn take(file: &mut FileConfig) -> FileKeys {
        FileKeys {
            local_prefixes: file.local_prefixes.take(),
            upload_max_age: file.upload_max_age.take(),
            max_uploads_per_client: file.max_uploads_per_client.take(),
            max_upload_bytes: file.max_upload_bytes.take(),
        }
    }
}

/// `--local-prefix` / `local_prefixes`, `upload_max_age`,
/// `--max-uploads-per-client` / `max_uploads_per_client` and
/// `--max-upload-bytes` / `max_upload_bytes`, validated.
pub(super) fn settings(
    args: &ServeArgs,
    file: FileKeys,
    path: Option<&Path>,
    mirrors: &MirrorConfig,
    (cache, storage): (&CacheOptions, &StorageConfig),
) -> Result<(Vec<String>, HostedOptions), String> {
    let flags = (!args.local_prefixes.is_empty()).then(|| args.local_prefixes.clone());
    let prefixes = match pick(
        flags,
        file.local_prefixes,
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
    let blob_limit = push_blob_limit(cache, storage);
    let mut hosted = HostedOptions::default()
        .with_max_manifest_size(cache.max_manifest_size)
        .with_max_blob_size(Some(blob_limit))
        .with_max_upload_bytes(Some(blob_limit));
    if let Some(text) = file.upload_max_age {
        let age = parse_duration(&text).map_err(|e| format!("upload_max_age: {e}"))?;
        hosted = hosted.with_upload_max_age(age);
    }
    let per_client = pick(
        args.max_uploads_per_client,
        file.max_uploads_per_client,
        path,
        (
            "--max-uploads-per-client",
            "OCI_CACHE_MAX_UPLOADS_PER_CLIENT",
            "max_uploads_per_client",
        ),
    );
    if let Some((sessions, origin)) = per_client {
        if sessions == 0 {
            return Err(format!(
                "{origin}: 0 would refuse every push; give at least 1 (default 64)"
            ));
        }
        hosted = hosted.with_max_uploads_per_client(sessions);
    }
    let total = pick(
        args.max_upload_bytes.clone(),
        file.max_upload_bytes,
        path,
        (
            "--max-upload-bytes",
            "OCI_CACHE_MAX_UPLOAD_BYTES",
            "max_upload_bytes",
        ),
    );
    if let Some((text, origin)) = total {
        let bytes = parse_size(&text).map_err(|e| format!("{origin}: {e}"))?;
        hosted = hosted.with_max_upload_bytes(Some(bytes));
    }
    hosted
        .validate()
        .map_err(|e| format!("{}: {}", super::file_label(path), super::config_message(e)))?;
    Ok((prefixes, hosted))
}

/// The largest blob a push may store unless configured otherwise: the
/// cache's `max_blob_size`, but at most half the cache's size cap and half
/// the space free on the storage's disk at start (a push cannot be evicted,
/// so one must never be able to take the disk alone).
fn push_blob_limit(cache: &CacheOptions, storage: &StorageConfig) -> u64 {
    let mut limit = cache.max_blob_size;
    if let Some(cap) = cache.max_size {
        limit = limit.min(cap / 2);
    }
    if let StorageConfig::Filesystem { dir } = storage {
        // The root may not exist yet: ask the nearest directory that does.
        let free = dir
            .ancestors()
            .find(|d| d.is_dir())
            .and_then(oci_cache_core::storage::free_space);
        if let Some(free) = free {
            limit = limit.min(free / 2);
        }
    }
    // Never under the smallest total the configuration accepts.
    limit.max(oci_cache_core::bounds::MIB)
}
