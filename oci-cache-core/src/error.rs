//! The one error type of `oci-cache-core`.
//!
//! Variants are named for what the caller does next: `NotFound` → try
//! upstream or answer 404, `DigestMismatch` → discard and maybe try another
//! endpoint, `Upstream` → look at [`UpstreamErrorKind`] to decide on fallback.

use std::time::Duration;

use crate::digest::{Digest, DigestError};
use crate::reference::ParseError;

/// Errors from references, storage, upstreams and the cache engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference, repository or tag did not parse.
    #[error(transparent)]
    Reference(#[from] ParseError),

    /// A digest did not parse.
    #[error(transparent)]
    Digest(#[from] DigestError),

    /// The object is not in storage (or not upstream, when `what` says so).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, for example `blob sha256:…`.
        what: String,
    },

    /// Content hashed to a different digest than the one it was stored or fetched under.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was supposed to have.
        expected: Digest,
        /// The digest the bytes actually hash to.
        actual: Digest,
    },

    /// Content was longer or shorter than announced.
    #[error("content of {digest} has the wrong size: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The object in question.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// How many bytes arrived (so far, when too long).
        actual: u64,
    },

    /// A byte range lies outside the object.
    #[error("range starting at byte {start} is outside the object of {size} bytes")]
    RangeNotSatisfiable {
        /// First byte asked for.
        start: u64,
        /// Size of the object.
        size: u64,
    },

    /// An object exceeds a configured limit (for example a manifest over 4 MiB).
    #[error("{what} is {actual} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit in bytes.
        limit: u64,
        /// The size seen.
        actual: u64,
    },

    /// A cached manifest exists, but the client does not accept its media type.
    #[error("manifest has media type {media_type}, which the client does not accept")]
    NotAcceptable {
        /// The stored manifest's media type.
        media_type: String,
    },

    /// The request named an upstream registry that is not configured (no open proxy).
    #[error(
        "upstream registry {name:?} is not configured on this mirror; ask the operator to add it"
    )]
    UnknownUpstream {
        /// The registry name as the client sent it.
        name: String,
    },

    /// A manifest or index is not JSON of a shape this crate knows.
    #[error("manifest {digest} is not a valid image manifest or index: {reason}")]
    InvalidManifest {
        /// The manifest's digest.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },

    /// The operation is not something a pull-through cache does (push, delete).
    #[error("{0} is not supported by a pull-through cache")]
    Unsupported(String),

    /// A push to a hosted repository was refused (upload session, blob or
    /// manifest); `kind` says which OCI error it is, `message` what to fix.
    #[error("{message}")]
    Push {
        /// Why the push was refused.
        kind: PushErrorKind,
        /// What was wrong, safe to show the client.
        message: String,
    },

    /// Configuration is invalid; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A storage backend failed.
    #[error("storage backend {backend} failed: {message}")]
    Storage {
        /// Backend name (`memory`, `filesystem`, `object`).
        backend: &'static str,
        /// What went wrong, for the operator.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// An upstream registry failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),

    /// The pull policy denies this repository or tag (see [`crate::policy`]);
    /// nothing was asked of upstream or storage.
    #[error("{what} is denied by the pull policy (rule {rule:?}); ask the mirror's operator")]
    Denied {
        /// The rule that denied it.
        rule: String,
        /// What was asked for, e.g. `docker.io/library/alpine:3`.
        what: String,
    },
}

/// Why a push was refused ([`Error::Push`]); one kind per OCI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushErrorKind {
    /// The upload session does not exist (never started, finished, cancelled or expired).
    UploadUnknown,
    /// The upload's data is unusable (a chunk that does not follow the last one's end, or too big).
    UploadInvalid,
    /// A chunk did not start where the upload ends; `offset` is where it ends.
    OutOfOrder {
        /// Bytes received so far.
        offset: u64,
    },
    /// The content does not hash to the digest given, or the digest is malformed.
    DigestInvalid,
    /// The manifest is not a manifest this registry accepts.
    ManifestInvalid,
    /// The manifest references a blob or manifest the repository does not hold.
    ManifestBlobUnknown,
    /// The content is over the size limit.
    SizeInvalid,
    /// The client holds as many open upload sessions as the mirror allows,
    /// or open sessions hold as many bytes as it allows.
    TooManyUploads,
}

impl Error {
    /// Shorthand for [`Error::Push`].
    pub fn push(kind: PushErrorKind, message: impl Into<String>) -> Self {
        Error::Push {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// Shorthand for [`Error::Storage`] with a source.
    pub fn storage(
        backend: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Storage {
            backend,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// True when the object does not exist (locally, or upstream).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Upstream(e) => e.kind() == UpstreamErrorKind::NotFound,
            _ => false,
        }
    }

    /// True when content failed verification (wrong digest or size).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } | Error::TooLarge { .. }
        ) || matches!(self, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Invalid)
    }
}

impl Error {
    /// True when the failure is a property of the bytes fetched for a digest
    /// (wrong digest, wrong size, over a size limit), not of the repository or
    /// upstream they were fetched through. Only such failures are shared with
    /// the other clients of a blob fill; a joined client retries any other
    /// failure through its own repository.
    pub fn is_content_failure(&self) -> bool {
        matches!(
            self,
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } | Error::TooLarge { .. }
        )
    }

    /// Why a write failed, read from the I/O error among its causes: the disk
    /// is full (`ENOSPC`, `EDQUOT`), read-only (`EROFS`), or something else.
    pub fn write_failure(&self) -> WriteFailure {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                        return WriteFailure::DiskFull
                    }
                    std::io::ErrorKind::ReadOnlyFilesystem => return WriteFailure::ReadOnly,
                    _ => {}
                }
            }
            cause = e.source();
        }
        WriteFailure::Other
    }
}

/// The class of a failed storage or spool write, for logs and metrics
/// ([`Error::write_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteFailure {
    /// No space left on the device, or the quota is exhausted.
    DiskFull,
    /// The filesystem is mounted read-only.
    ReadOnly,
    /// Any other failure.
    Other,
}

impl WriteFailure {
    /// `disk_full`, `read_only` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteFailure::DiskFull => "disk_full",
            WriteFailure::ReadOnly => "read_only",
            WriteFailure::Other => "other",
        }
    }

    /// What an operator reads in the log: `disk full`, `read-only filesystem`
    /// or `write failed`.
    pub fn describe(self) -> &'static str {
        match self {
            WriteFailure::DiskFull => "disk full",
            WriteFailure::ReadOnly => "read-only filesystem",
            WriteFailure::Other => "write failed",
        }
    }
}

/// How an upstream request failed; decides whether a mirror chain moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// 404: the endpoint does not have the object. The chain moves on.
    NotFound,
    /// 401 after authentication was tried. Definitive: the chain stops.
    Unauthorized,
    /// 403. Definitive: the chain stops.
    Denied,
    /// 429. The chain moves on; `retry_after` says how long the endpoint asked us to wait.
    TooManyRequests,
    /// 5xx, connection refused or reset. The chain moves on.
    Unavailable,
    /// Connect, first-byte or stall timeout. The chain moves on.
    Timeout,
    /// The endpoint answered with something that is not a valid registry response.
    Invalid,
    /// The endpoint is skipped because its circuit breaker is open (or the
    /// chain has given up on it for this blob).
    Skipped,
    /// The cache is offline: no upstream is contacted, so what is not
    /// cached does not exist here (a client is told "not cached", not
    /// "unavailable").
    Offline,
}

impl UpstreamErrorKind {
    /// A short label for logs and metrics: `not_found`, `unauthorized`,
    /// `denied`, `too_many_requests`, `unavailable`, `timeout`, `invalid`,
    /// `skipped`, `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::NotFound => "not_found",
            UpstreamErrorKind::Unauthorized => "unauthorized",
            UpstreamErrorKind::Denied => "denied",
            UpstreamErrorKind::TooManyRequests => "too_many_requests",
            UpstreamErrorKind::Unavailable => "unavailable",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Invalid => "invalid",
            UpstreamErrorKind::Skipped => "skipped",
            UpstreamErrorKind::Offline => "offline",
        }
    }
}

/// An upstream registry failure, classified by kind.
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint}: {message}")]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    endpoint: String,
    message: String,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl UpstreamError {
    /// A new error of `kind` from `endpoint` (a URL without credentials).
    pub fn new(
        kind: UpstreamErrorKind,
        endpoint: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        UpstreamError {
            kind,
            endpoint: endpoint.into(),
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Attaches a `Retry-After` delay.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The classification.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// The endpoint that failed.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What the endpoint asked us to wait, from `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// True when the next endpoint in a chain should be tried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::NotFound
                | UpstreamErrorKind::TooManyRequests
                | UpstreamErrorKind::Unavailable
                | UpstreamErrorKind::Timeout
                | UpstreamErrorKind::Invalid
                | UpstreamErrorKind::Skipped
                | UpstreamErrorKind::Offline
        )
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Displays an error followed by each of its causes, `: `-separated, so a
/// log line says `connection refused` rather than only `client error (Connect)`.
///
/// ```
/// use oci_cache_core::error::ErrorChain;
/// let io = std::io::Error::other("connection refused");
/// let e = oci_cache_core::Error::storage("fs", "cannot open", io);
/// assert_eq!(ErrorChain(&e).to_string(), "storage backend fs failed: cannot open: connection refused");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The text of an error's cause, standing in for the original (which cannot be cloned).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CauseText(String);

impl Error {
    /// A copy of this error for every waiter of a shared (single-flight) fetch.
    ///
    /// Errors own boxed causes and cannot be `Clone`; the copy keeps the variant
    /// (so status codes and predicates stay the same) and the cause's text.
    pub(crate) fn duplicate(&self) -> Error {
        let cause = |source: &Option<Box<dyn std::error::Error + Send + Sync + 'static>>| {
            source
                .as_ref()
                // The whole chain: waiters log the same causes as the fetcher.
                .map(|s| Box::new(CauseText(ErrorChain(s.as_ref()).to_string())) as Box<_>)
        };
        match self {
            Error::Reference(e) => Error::Reference(e.clone()),
            Error::Digest(e) => Error::Digest(e.clone()),
            Error::NotFound { what } => Error::NotFound { what: what.clone() },
            Error::DigestMismatch { expected, actual } => Error::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Error::SizeMismatch {
                digest,
                expected,
                actual,
            } => Error::SizeMismatch {
                digest: digest.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::RangeNotSatisfiable { start, size } => Error::RangeNotSatisfiable {
                start: *start,
                size: *size,
            },
            Error::TooLarge {
                what,
                limit,
                actual,
            } => Error::TooLarge {
                what: what.clone(),
                limit: *limit,
                actual: *actual,
            },
            Error::NotAcceptable { media_type } => Error::NotAcceptable {
                media_type: media_type.clone(),
            },
            Error::Push { kind, message } => Error::Push {
                kind: *kind,
                message: message.clone(),
            },
            Error::UnknownUpstream { name } => Error::UnknownUpstream { name: name.clone() },
            Error::Denied { rule, what } => Error::Denied {
                rule: rule.clone(),
                what: what.clone(),
            },
            Error::InvalidManifest { digest, reason } => Error::InvalidManifest {
                digest: digest.clone(),
                reason: reason.clone(),
            },
            Error::Unsupported(what) => Error::Unsupported(what.clone()),
            Error::Config(what) => Error::Config(what.clone()),
            Error::Storage {
                backend,
                message,
                source,
            } => Error::Storage {
                backend,
                message: message.clone(),
                source: cause(source),
            },
            Error::Upstream(e) => Error::Upstream(UpstreamError {
                kind: e.kind,
                endpoint: e.endpoint.clone(),
                message: e.message.clone(),
                retry_after: e.retry_after,
                source: cause(&e.source),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn waiters_of_a_shared_fetch_see_the_whole_cause_chain() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = Error::from(
            UpstreamError::new(
                UpstreamErrorKind::Unavailable,
                "https://r.example",
                "request failed",
            )
            .with_source(Outer(refused)),
        );
        let full = "upstream https://r.example: request failed: client error (Connect): connection refused";
        assert_eq!(ErrorChain(&err).to_string(), full);
        let copy = err.duplicate();
        assert_eq!(ErrorChain(&copy).to_string(), full);
        assert!(matches!(copy, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable));
    }
}
