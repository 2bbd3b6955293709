//! Integration tests of oci-cache-http (one binary; topics as modules).

#![allow(
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod support;

mod api;
mod auth;
mod budgets;
mod chain;
mod client_auth;
mod conformance;
mod embed;
mod fleet;
mod hostile_body;
mod hostile_wire;
mod layers;
mod metrics;
mod observe;
mod referrers;
mod resilience;
mod routing;
mod segments;
mod status;
mod trust;
mod upstream;
