//! Errors of this crate, and the one place where any error becomes an OCI
//! error response (status, code, JSON envelope).
//!
//! Internal causes (storage failures, upstream transport errors) are logged
//! inside the request span and never sent to the client: the client gets the
//! OCI code and a short, fixed message.

use http::{HeaderValue, StatusCode};
use oci_cache_core::reference::ParseErrorKind;
use oci_cache_core::UpstreamErrorKind;
use serde::{Deserialize, Serialize};

use crate::body::{self, Body};

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core (engine, storage, references, upstream).
    #[error(transparent)]
    Core(#[from] oci_cache_core::Error),

    /// Accepting connections or another socket operation failed.
    #[error("network i/o failed: {0}")]
    Io(#[from] std::io::Error),

    /// The TLS client could not be set up (for example no usable root certificates).
    #[error("tls setup failed: {0}; check the system certificate store")]
    Tls(String),

    /// An ACME certificate could not be obtained, stored or loaded (the
    /// message says which step and what to check).
    #[error("ACME: {0}")]
    Acme(String),

    /// Client authentication could not be set up (htpasswd file, access settings).
    #[error("client authentication: {0}")]
    ClientAuth(String),

    /// Fleet settings are unusable (the peer secret, the advertised URL).
    #[error("fleet: {0}")]
    Fleet(String),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error codes of the OCI distribution spec (plus the legacy ones clients know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OciErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Digest malformed or not matching the content.
    DigestInvalid,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository (or upstream) not known.
    NameUnknown,
    /// Invalid tag (legacy code, still understood by clients).
    TagInvalid,
    /// Invalid `n` pagination parameter.
    PaginationNumberInvalid,
    /// Requested range not satisfiable.
    RangeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Access denied.
    Denied,
    /// The operation is not supported (writes to a pull-through cache).
    Unsupported,
    /// Rate limited.
    TooManyRequests,
    /// Service unavailable.
    Unavailable,
    /// The upload session is unknown (finished, cancelled or expired).
    BlobUploadUnknown,
    /// The upload's data is unusable.
    BlobUploadInvalid,
    /// A manifest references a blob or manifest the repository does not hold.
    ManifestBlobUnknown,
    /// Content over a size limit, or a length that does not match.
    SizeInvalid,
    /// Anything else.
    Unknown,
}

impl OciErrorCode {
    /// The code as it appears on the wire, e.g. `MANIFEST_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            OciErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            OciErrorCode::DigestInvalid => "DIGEST_INVALID",
            OciErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            OciErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciErrorCode::NameInvalid => "NAME_INVALID",
            OciErrorCode::NameUnknown => "NAME_UNKNOWN",
            OciErrorCode::TagInvalid => "TAG_INVALID",
            OciErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            OciErrorCode::RangeInvalid => "RANGE_INVALID",
            OciErrorCode::Unauthorized => "UNAUTHORIZED",
            OciErrorCode::Denied => "DENIED",
            OciErrorCode::Unsupported => "UNSUPPORTED",
            OciErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            OciErrorCode::Unavailable => "UNAVAILABLE",
            OciErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            OciErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            OciErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            OciErrorCode::SizeInvalid => "SIZE_INVALID",
            OciErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// The OCI error body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The errors (this server always sends exactly one).
    pub errors: Vec<ErrorInfo>,
}

/// One entry of an [`ErrorEnvelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Upper-case code such as `BLOB_UNKNOWN`.
    pub code: String,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// What a request was about, so that "not found" gets the right code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorSubject {
    /// A manifest: `MANIFEST_UNKNOWN`.
    Manifest,
    /// A blob: `BLOB_UNKNOWN`.
    Blob,
    /// A repository (tag list): `NAME_UNKNOWN`.
    Repository,
    /// Anything else: `NAME_UNKNOWN`.
    Other,
}

/// An error on its way to the client: status, code, safe message and extra
/// headers. The one mapping from [`oci_cache_core::Error`] to OCI responses,
/// public so an embedder's own routes answer the same error bodies:
///
/// ```
/// use http::StatusCode;
/// use oci_cache_http::{ErrorSubject, OciError, OciErrorCode};
///
/// let response = OciError::new(StatusCode::FORBIDDEN, OciErrorCode::Denied, "not here").into_response();
/// assert_eq!(response.status(), 403);
/// let core = oci_cache_core::Error::not_found("manifest");
/// assert_eq!(OciError::from_core(&core, ErrorSubject::Manifest).code(), OciErrorCode::ManifestUnknown);
/// ```
#[derive(Debug, Clone)]
pub struct OciError {
    pub(crate) status: StatusCode,
    pub(crate) code: OciErrorCode,
    pub(crate) message: String,
    /// `Content-Range: bytes */size` for 416.
    pub(crate) unsatisfiable_size: Option<u64>,
    /// `Retry-After` seconds for 429.
    pub(crate) retry_after: Option<u64>,
}

impl OciError {
    /// An error with this status, code and client-facing message.
    pub fn new(status: StatusCode, code: OciErrorCode, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            unsatisfiable_size: None,
            retry_after: None,
        }
    }

    /// Maps a core error for a request about `subject`. The message sent is
    /// fixed per case; the full error (with causes) is logged by the caller.
    pub fn from_core(err: &oci_cache_core::Error, subject: ErrorSubject) -> Self {
        use oci_cache_core::Error as E;
        let not_found = |what: &str| {
            let code = match subject {
                ErrorSubject::Manifest => OciErrorCode::ManifestUnknown,
                ErrorSubject::Blob => OciErrorCode::BlobUnknown,
                ErrorSubject::Repository | ErrorSubject::Other => OciErrorCode::NameUnknown,
            };
            OciError::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
        };
        match err {
            E::Reference(e) => match e.kind() {
                ParseErrorKind::InvalidTag => OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::TagInvalid,
                    format!("invalid tag {:?}", e.input()),
                ),
                ParseErrorKind::InvalidDigest => OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::DigestInvalid,
                    format!("invalid digest {:?}", e.input()),
                ),
                _ => OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::NameInvalid,
                    format!("invalid repository name {:?}", e.input()),
                ),
            },
            E::Digest(e) => OciError::new(
                StatusCode::BAD_REQUEST,
                OciErrorCode::DigestInvalid,
                format!("invalid digest {:?}", e.input()),
            ),
            E::NotFound { what } => not_found(what),
            E::NotAcceptable { media_type } => OciError::new(
                StatusCode::NOT_FOUND,
                OciErrorCode::ManifestUnknown,
                format!("manifest has media type {media_type}, which the accept header does not include"),
            ),
            E::RangeNotSatisfiable { size, .. } => {
                let mut api = OciError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    OciErrorCode::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                );
                api.unsatisfiable_size = Some(*size);
                api
            }
            E::UnknownUpstream { name } => OciError::new(
                StatusCode::NOT_FOUND,
                OciErrorCode::NameUnknown,
                format!("upstream registry {name:?} is not configured on this mirror"),
            ),
            E::Unsupported(what) => OciError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                OciErrorCode::Unsupported,
                format!("{what} is not supported by a pull-through cache"),
            ),
            E::Push { kind, message } => {
                use oci_cache_core::PushErrorKind as K;
                let (status, code) = match kind {
                    K::UploadUnknown => (StatusCode::NOT_FOUND, OciErrorCode::BlobUploadUnknown),
                    K::OutOfOrder { .. } => {
                        (StatusCode::RANGE_NOT_SATISFIABLE, OciErrorCode::BlobUploadInvalid)
                    }
                    K::DigestInvalid => (StatusCode::BAD_REQUEST, OciErrorCode::DigestInvalid),
                    K::ManifestInvalid => (StatusCode::BAD_REQUEST, OciErrorCode::ManifestInvalid),
                    K::ManifestBlobUnknown => {
                        (StatusCode::BAD_REQUEST, OciErrorCode::ManifestBlobUnknown)
                    }
                    K::SizeInvalid => (StatusCode::PAYLOAD_TOO_LARGE, OciErrorCode::SizeInvalid),
                    K::TooManyUploads => {
                        (StatusCode::TOO_MANY_REQUESTS, OciErrorCode::TooManyRequests)
                    }
                    _ => (StatusCode::BAD_REQUEST, OciErrorCode::BlobUploadInvalid),
                };
                // Push messages name only digests, offsets and limits: safe to send.
                OciError::new(status, code, message.clone())
            }
            E::DigestMismatch { .. } | E::SizeMismatch { .. } => OciError::new(
                StatusCode::BAD_GATEWAY,
                OciErrorCode::Unknown,
                "upstream content failed verification",
            ),
            E::TooLarge { what, limit, .. } => OciError::new(
                StatusCode::BAD_GATEWAY,
                OciErrorCode::ManifestInvalid,
                format!("upstream {what} is over the limit of {limit} bytes"),
            ),
            // The rule's name tells the user whom to ask; it is the
            // operator's own configuration, so safe to show.
            E::Denied { .. } => {
                OciError::new(StatusCode::FORBIDDEN, OciErrorCode::Denied, err.to_string())
            }
            E::Upstream(up) => {
                let (status, code, message) = match up.kind() {
                    UpstreamErrorKind::NotFound => return not_found("upstream object"),
                    // Offline, what is not cached does not exist here: a
                    // 404 a client reports as "not found", not a 503 it
                    // retries. The handler names what was asked for.
                    UpstreamErrorKind::Offline => {
                        let mut api = not_found("upstream object");
                        api.message = "not cached (offline)".to_owned();
                        return api;
                    }
                    // A 401 from upstream means our (absent or configured) upstream
                    // credentials are not enough; answering 401 would make clients
                    // start an auth flow with us that cannot succeed.
                    UpstreamErrorKind::Unauthorized | UpstreamErrorKind::Denied => (
                        StatusCode::FORBIDDEN,
                        OciErrorCode::Denied,
                        "upstream registry denied access",
                    ),
                    UpstreamErrorKind::TooManyRequests => (
                        StatusCode::TOO_MANY_REQUESTS,
                        OciErrorCode::TooManyRequests,
                        "upstream registry is rate limiting this mirror",
                    ),
                    UpstreamErrorKind::Timeout => (
                        StatusCode::GATEWAY_TIMEOUT,
                        OciErrorCode::Unavailable,
                        "upstream registry timed out",
                    ),
                    UpstreamErrorKind::Invalid => (
                        StatusCode::BAD_GATEWAY,
                        OciErrorCode::Unknown,
                        "upstream registry sent an invalid response",
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        OciErrorCode::Unavailable,
                        "upstream registry is unavailable",
                    ),
                };
                let mut api = OciError::new(status, code, message);
                api.retry_after = up.retry_after().map(|d| d.as_secs());
                api
            }
            _ => OciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                OciErrorCode::Unknown,
                "internal error; see the mirror's logs",
            ),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OCI error code.
    pub fn code(&self) -> OciErrorCode {
        self.code
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response: JSON envelope (no body for HEAD, which the caller strips).
    pub fn into_response(self) -> http::Response<Body> {
        let envelope = ErrorEnvelope {
            errors: vec![ErrorInfo {
                code: self.code.as_str().to_owned(),
                message: self.message,
                detail: None,
            }],
        };
        let json = serde_json::to_vec(&envelope).unwrap_or_default();
        let len = json.len();
        let mut response = http::Response::new(body::full(json));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(size) = self.unsatisfiable_size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(http::header::CONTENT_RANGE, v);
            }
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use oci_cache_core::digest::Digest;
    use oci_cache_core::{Error as E, UpstreamError};

    fn map(err: E, subject: ErrorSubject) -> (u16, &'static str, String) {
        let api = OciError::from_core(&err, subject);
        (api.status.as_u16(), api.code.as_str(), api.message)
    }

    #[test]
    fn core_errors_map_to_status_and_code() {
        let up = |kind| E::Upstream(UpstreamError::new(kind, "https://secret.internal", "cause"));
        let d = Digest::sha256_of(b"a");
        let cases = [
            (
                E::not_found("blob x"),
                ErrorSubject::Blob,
                404,
                "BLOB_UNKNOWN",
            ),
            (
                E::not_found("m"),
                ErrorSubject::Manifest,
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                E::not_found("r"),
                ErrorSubject::Repository,
                404,
                "NAME_UNKNOWN",
            ),
            (
                up(UpstreamErrorKind::NotFound),
                ErrorSubject::Manifest,
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                up(UpstreamErrorKind::Unauthorized),
                ErrorSubject::Blob,
                403,
                "DENIED",
            ),
            (
                up(UpstreamErrorKind::Denied),
                ErrorSubject::Blob,
                403,
                "DENIED",
            ),
            (
                up(UpstreamErrorKind::TooManyRequests),
                ErrorSubject::Blob,
                429,
                "TOOMANYREQUESTS",
            ),
            (
                up(UpstreamErrorKind::Unavailable),
                ErrorSubject::Blob,
                503,
                "UNAVAILABLE",
            ),
            (
                up(UpstreamErrorKind::Skipped),
                ErrorSubject::Blob,
                503,
                "UNAVAILABLE",
            ),
            (
                up(UpstreamErrorKind::Timeout),
                ErrorSubject::Blob,
                504,
                "UNAVAILABLE",
            ),
            (
                up(UpstreamErrorKind::Invalid),
                ErrorSubject::Blob,
                502,
                "UNKNOWN",
            ),
            (
                E::UnknownUpstream { name: "x".into() },
                ErrorSubject::Manifest,
                404,
                "NAME_UNKNOWN",
            ),
            (
                E::Unsupported("push".into()),
                ErrorSubject::Other,
                405,
                "UNSUPPORTED",
            ),
            (
                E::NotAcceptable {
                    media_type: "t".into(),
                },
                ErrorSubject::Manifest,
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                E::RangeNotSatisfiable { start: 9, size: 3 },
                ErrorSubject::Blob,
                416,
                "RANGE_INVALID",
            ),
            (
                E::DigestMismatch {
                    expected: d.clone(),
                    actual: d.clone(),
                },
                ErrorSubject::Blob,
                502,
                "UNKNOWN",
            ),
            (
                E::TooLarge {
                    what: "manifest".into(),
                    limit: 1,
                    actual: 2,
                },
                ErrorSubject::Manifest,
                502,
                "MANIFEST_INVALID",
            ),
            (
                E::Config("secret path".into()),
                ErrorSubject::Other,
                500,
                "UNKNOWN",
            ),
            (
                E::storage("memory", "disk exploded", std::io::Error::other("secret")),
                ErrorSubject::Blob,
                500,
                "UNKNOWN",
            ),
        ];
        for (err, subject, status, code) in cases {
            let text = err.to_string();
            let (s, c, message) = map(err, subject);
            assert_eq!((s, c), (status, code), "{text}");
            assert!(
                !message.contains("secret"),
                "{message} leaks an internal cause"
            );
        }
    }

    #[test]
    fn responses_carry_the_envelope_and_extra_headers() {
        let mut api = OciError::from_core(
            &E::RangeNotSatisfiable { start: 9, size: 3 },
            ErrorSubject::Blob,
        );
        api.retry_after = Some(5);
        let response = api.into_response();
        assert_eq!(response.status(), 416);
        let h = response.headers();
        assert_eq!(h["content-range"], "bytes */3");
        assert_eq!(h["retry-after"], "5");
        assert_eq!(h["content-type"], "application/json");
        let envelope = ErrorEnvelope {
            errors: vec![ErrorInfo {
                code: "RANGE_INVALID".into(),
                message: "m".into(),
                detail: None,
            }],
        };
        assert_eq!(
            serde_json::to_string(&envelope).unwrap(),
            r#"{"errors":[{"code":"RANGE_INVALID","message":"m"}]}"#
        );
    }
}
