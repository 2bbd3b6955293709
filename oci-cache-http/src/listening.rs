//! Several listening addresses in one server, each with its own default
//! upstream: how one process keeps the one-port-per-upstream layout of
//! registry:2 pull-through containers (`docker.io` on `:5000`,
//! `registry.k8s.io` on `:5001`, …) without touching a client.

use oci_cache_core::reference::Registry;
use tokio::net::TcpListener;

/// The upstream of the listener a request arrived on, in the request's
/// extensions when that listener has one ([`serve_all`](crate::serve_all)
/// puts it there). Routing sends a request that names no upstream (no
/// `?ns=`, no registry path prefix) there instead of the mirror's default
/// upstream; `?ns=` and path prefixes still choose any upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUpstream(pub Registry);

/// A bound listener, with the upstream its requests get by default.
#[derive(Debug)]
pub struct Listening {
    pub(crate) listener: TcpListener,
    pub(crate) default_upstream: Option<Registry>,
}

impl Listening {
    /// `listener`, routing as the mirror's default upstream says.
    pub fn new(listener: TcpListener) -> Self {
        Listening {
            listener,
            default_upstream: None,
        }
    }

    /// Requests arriving here that name no upstream go to `upstream`.
    pub fn with_default_upstream(mut self, upstream: Registry) -> Self {
        self.default_upstream = Some(upstream);
        self
    }
}
