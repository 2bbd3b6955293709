//! Fleet mode: several `serve` replicas on one bucket that hand blob fills
//! to each other. `--advertise-url` and `--peer-secret-file` (or the
//! `[fleet]` table) turn it on; both or neither, on S3 storage only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_cache_core::fleet::{Fleet, FleetIdentity, LeaseTimings};
use oci_cache_core::observe::{Observer, UploadAbortReason, UploadsAbortedEvent};
use oci_cache_core::storage::{ObjectStorage, S3Config, MIN_STALE_BOUND};
use oci_cache_http::fleet::{replica_origin, HyperPeerFills, PeerOptions, PeerSecret};
use serde::Deserialize;

use crate::config::StorageConfig;
use crate::engine::BoxError;

/// The `[fleet]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FleetFile {
    /// The URL the other replicas reach this one at.
    advertise_url: Option<String>,
    /// The file holding the secret the replicas share.
    peer_secret_file: Option<PathBuf>,
    /// `[fleet.lease]`: heartbeat, takeover TTL and call timeout of the
    /// fill leases, straight into the library's type.
    lease: Option<LeaseTimings>,
    /// Incomplete multipart uploads whose marker is untouched for this long
    /// are a dead writer's: aborted at start. Default 1 h, at least 30 min.
    #[serde(default, deserialize_with = "some_duration")]
    abort_uploads_after: Option<Duration>,
}

fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    oci_cache_core::duration::deserialize(d).map(Some)
}

/// How long an upload marker stays untouched before its upload counts as a
/// dead writer's, unless `[fleet] abort_uploads_after` says otherwise.
pub(crate) const ABORT_UPLOADS_AFTER: Duration = Duration::from_secs(60 * 60);

/// Fleet mode, resolved: this replica's URL and the shared secret, read.
#[derive(Debug, Clone)]
pub(crate) struct FleetSettings {
    pub(crate) advertise_url: String,
    pub(crate) secret: PeerSecret,
    pub(crate) timings: LeaseTimings,
    pub(crate) abort_uploads_after: Duration,
}

/// Fleet mode from the flags over the `[fleet]` table, validated
/// completely (the secret file is read here, so `check-config` catches what
/// `serve` would).
pub(crate) fn settings(
    (url_flag, secret_flag): (Option<&String>, Option<&PathBuf>),
    file: Option<FleetFile>,
    config: Option<&Path>,
    storage: &StorageConfig,
) -> Result<Option<FleetSettings>, String> {
    let file = file.unwrap_or_default();
    let label = |flag: &str, key: &str, from_flag: bool| match (from_flag, config) {
        (true, _) | (false, None) => flag.to_owned(),
        (false, Some(path)) => format!("config file {}: [fleet] {key}", path.display()),
    };
    let url = url_flag
        .map(|u| (u.clone(), label("--advertise-url", "advertise_url", true)))
        .or_else(|| {
            let key = label("--advertise-url", "advertise_url", false);
            file.advertise_url.map(|u| (u, key))
        });
    let secret = secret_flag
        .map(|p| {
            (
                p.clone(),
                label("--peer-secret-file", "peer_secret_file", true),
            )
        })
        .or_else(|| {
            let key = label("--peer-secret-file", "peer_secret_file", false);
            file.peer_secret_file.map(|p| (p, key))
        });
    let ((url, url_origin), (secret_path, secret_origin)) = match (url, secret) {
        (None, None) => return Ok(None),
        (Some(url), Some(secret)) => (url, secret),
        (Some((_, origin)), None) => {
            return Err(format!(
                "{origin} is set but --peer-secret-file (or [fleet] peer_secret_file) is not: \
                 replicas authenticate to each other with a shared secret; give both, or neither to run alone"
            ))
        }
        (None, Some((_, origin))) => {
            return Err(format!(
                "{origin} is set but --advertise-url (or [fleet] advertise_url) is not: \
                 the other replicas need this one's URL, e.g. http://POD_IP:5000; give both, or neither to run alone"
            ))
        }
    };
    if !matches!(storage, StorageConfig::S3(_)) {
        return Err(format!(
            "{url_origin}: fleet mode needs S3 storage ([storage] kind = \"s3\"), the bucket every replica shares; \
             replicas on their own disks share nothing. Point every replica at one bucket, or run one replica without fleet settings"
        ));
    }
    replica_origin(&url).map_err(|e| format!("{url_origin}: {e}"))?;
    let secret = read_secret(&secret_path).map_err(|e| format!("{secret_origin}: {e}"))?;
    let timings = file.lease.unwrap_or_default();
    timings.validate().map_err(|e| {
        let table = config.map_or_else(
            || "[fleet.lease]".to_owned(),
            |p| format!("config file {}: [fleet.lease]", p.display()),
        );
        format!("{table}: {}", crate::config::config_message(e))
    })?;
    let abort_uploads_after = file.abort_uploads_after.unwrap_or(ABORT_UPLOADS_AFTER);
    if abort_uploads_after < MIN_STALE_BOUND {
        return Err(format!(
            "[fleet] abort_uploads_after ({abort_uploads_after:?}) must be at least {MIN_STALE_BOUND:?}: \
             a live writer renews its upload markers every 10 minutes, and a shorter bound would abort its uploads"
        ));
    }
    Ok(Some(FleetSettings {
        advertise_url: url,
        secret,
        timings,
        abort_uploads_after,
    }))
}

/// Opens the shared bucket and joins the fleet on it: probes once that the
/// bucket honours conditional writes (without them, leases stay off and
/// every replica fills alone, with a warning).
pub(crate) async fn join(
    fleet: &FleetSettings,
    s3: &S3Config,
    max_blob_size: u64,
) -> Result<(Arc<ObjectStorage>, Fleet), BoxError> {
    let identity = FleetIdentity {
        holder_id: holder_id(&fleet.advertise_url),
        advertise_url: fleet.advertise_url.clone(),
    };
    // Upload markers name the holder, so the replica taking a fill over
    // finds this one's uploads.
    let storage = Arc::new(ObjectStorage::s3(s3)?.with_upload_owner(&identity.holder_id));
    // A holder that does not answer is waited out on its lease: asking it
    // must end well before the lease could go stale.
    let options = PeerOptions::default()
        .with_max_blob_size(max_blob_size)
        .with_answer_timeout(fleet.timings.ttl / 2);
    let peers = Arc::new(HyperPeerFills::new(fleet.secret.clone(), options)?);
    let joined = Fleet::connect(&storage, identity, fleet.timings, peers).await;
    Ok((storage, joined))
}

/// Aborts, in the background, the incomplete multipart uploads in the
/// bucket whose markers are untouched for `older_than` (writers killed
/// mid-upload), counting them in `observer`.
pub(crate) fn spawn_upload_sweep(
    s3: &S3Config,
    older_than: Duration,
    observer: Arc<dyn Observer>,
) -> Result<(), BoxError> {
    let storage = ObjectStorage::s3(s3)?;
    tokio::spawn(async move {
        match storage.abort_stale_uploads(older_than).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(
                    count,
                    ?older_than,
                    "aborted incomplete multipart uploads left by writers that died"
                );
                observer.uploads_aborted(&UploadsAbortedEvent {
                    count,
                    reason: UploadAbortReason::Stale,
                });
            }
            Err(e) => {
                tracing::warn!(error = %oci_cache_core::ErrorChain(&e), "sweeping incomplete multipart uploads failed; the next start retries");
            }
        }
    });
    Ok(())
}

/// Unique per process run: a restarted replica is a new holder, so it
/// never mistakes a lease of its previous life for its own.
fn holder_id(advertise_url: &str) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{advertise_url}#{}-{started}", std::process::id())
}

/// Reads the shared secret, refusing a file anyone on the machine can read.
fn read_secret(path: &Path) -> Result<PeerSecret, String> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the peer secret file {shown}: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o004 != 0 {
            return Err(format!(
                "the peer secret file {shown} is readable by every user; `chmod 600 {shown}` \
                 (in Kubernetes, mount the Secret with defaultMode: 0400)"
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    let text = std::fs::read_to_string(path)
        .map_err(|e| oci_cache_core::unreadable::unreadable("the peer secret file", path, &e))?;
    if text.trim().is_empty() {
        return Err(format!(
            "the peer secret file {shown} is empty; write a secret into it, e.g. `openssl rand -hex 32 > {shown}`"
        ));
    }
    PeerSecret::new(&text).map_err(|e| format!("{shown}: {e}"))
}
