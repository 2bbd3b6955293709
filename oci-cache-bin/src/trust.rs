//! Settings of the mirror's own trust boundary: client authentication
//! (`--htpasswd`, `[auth]`, per-upstream `access`).

use std::collections::HashMap;
use std::path::PathBuf;

use oci_cache_http::client_auth::{Access, ClientAuthConfig};
use serde::Deserialize;

use crate::config::StorageConfig;

/// Realm of the Basic challenge when the configuration names none.
const DEFAULT_REALM: &str = "oci-cache";

/// The `[auth]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    /// htpasswd file with bcrypt entries (`htpasswd -B`).
    htpasswd: Option<PathBuf>,
    /// Realm of the Basic challenge.
    realm: Option<String>,
    /// Where digests of private content are recorded (default: in the
    /// filesystem storage directory; in memory for other storages).
    private_digests: Option<PathBuf>,
}

/// Client authentication settings from the flag, the file and the
/// upstreams' `access`; `None` when no htpasswd file is given.
pub(crate) fn client_auth(
    flag: Option<&PathBuf>,
    file: Option<AuthFile>,
    access: HashMap<String, Access>,
    storage: &StorageConfig,
) -> Result<Option<ClientAuthConfig>, String> {
    let file = file.unwrap_or_default();
    let Some(htpasswd) = flag.cloned().or(file.htpasswd) else {
        if !access.is_empty() {
            return Err(
                "an upstream sets access, but client authentication is off; give --htpasswd or [auth] htpasswd"
                    .to_owned(),
            );
        }
        return Ok(None);
    };
    let private_digests = file.private_digests.or(match storage {
        StorageConfig::Filesystem { dir } => Some(dir.join("_private-digests")),
        _ => None,
    });
    Ok(Some(ClientAuthConfig {
        htpasswd,
        realm: file.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned()),
        access,
        private_digests,
    }))
}
