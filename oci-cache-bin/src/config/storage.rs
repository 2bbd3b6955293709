//! The `[storage]` table: which backend holds the cache, and what can be
//! checked about it without opening it.

use std::path::{Path, PathBuf};

use oci_cache_core::storage::{ObjectStorage, S3Config};
use serde::Deserialize;

use super::DEFAULT_STORAGE_DIR;

/// Which storage backend to use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum StorageConfig {
    /// A directory on local disk.
    Filesystem {
        /// The storage root; [`DEFAULT_STORAGE_DIR`] when left out.
        #[serde(default = "default_storage_dir")]
        dir: PathBuf,
    },
    /// In memory; gone at exit (tests, demos). A struct variant, not a
    /// unit one: serde lets a unit variant of an internally tagged enum
    /// ignore every other key, and a misspelt key must be refused.
    Memory {},
    /// An S3 bucket or an S3-compatible server.
    S3(S3Config),
}

pub(super) fn default_storage_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STORAGE_DIR)
}

/// Everything about the storage that can be checked without opening it:
/// what `serve` would otherwise find out only at start-up.
pub(super) fn validate_storage(storage: &StorageConfig, file: Option<&Path>) -> Result<(), String> {
    let table = match file {
        Some(path) => format!("config file {}: [storage]", path.display()),
        None => "[storage]".to_owned(),
    };
    match storage {
        StorageConfig::Filesystem { dir } if dir.as_os_str().is_empty() => Err(format!(
            "{table}: dir is empty; give a directory, or leave dir out for {DEFAULT_STORAGE_DIR}"
        )),
        StorageConfig::Filesystem { .. } | StorageConfig::Memory {} => Ok(()),
        StorageConfig::S3(s3) if s3.bucket.trim().is_empty() => Err(format!(
            "{table}: kind = \"s3\" needs a bucket; add bucket = \"NAME\" to the [storage] table"
        )),
        // Builds the client only (no request is made), which checks the
        // endpoint, region and credential settings as `serve` will.
        StorageConfig::S3(s3) => ObjectStorage::s3(s3)
            .map(drop)
            .map_err(|e| format!("{table}: {e}")),
    }
}
