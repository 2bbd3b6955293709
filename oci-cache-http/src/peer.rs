//! [`PeerAddr`]: the client's address as a request extension.

use std::net::SocketAddr;

/// The client's address, put into each request's extensions by
/// [`serve`](crate::serve). Client authentication counts failed logins per
/// address and hosted uploads are capped per address; an embedder serving
/// the [`Pipeline`](crate::Pipeline) or [`OciService`](crate::OciService)
/// another way should insert it too: without it all clients share one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);
