//! Entry points for the cargo-fuzz targets in `fuzz/`. Not a stable API.

use std::path::PathBuf;

use crate::cli::{ConfigArgs, ServeArgs};
use crate::config::{resolve_with, FileConfig};

/// Parses `text` as an `oci-cache.toml` and validates it exactly as `serve`
/// does with no flags set: `Ok` or the message the operator would see. Reads
/// no file and contacts nothing (the registry:2 compatibility layer still
/// reads `REGISTRY_*` variables; fuzzing runs without them).
pub fn check_config_text(text: &str) -> Result<(), String> {
    let file: FileConfig = toml::from_str(text).map_err(|e| format!("fuzz.toml: {e}"))?;
    let args = ServeArgs {
        config: ConfigArgs {
            config: Some(PathBuf::from("fuzz.toml")),
            ..ConfigArgs::default()
        },
        ..ServeArgs::default()
    };
    resolve_with(&args, file).map(drop)
}
