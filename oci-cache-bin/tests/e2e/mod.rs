//! End-to-end tests: origin registry, mirror, skopeo, all on 127.0.0.1.
//!
//! `registry_proxy` proves the harness against docker-registry in proxy mode;
//! `oci_cache` runs the same kind of pulls through the `oci-cache` binary.

mod acme;
mod airgap;
mod artifacts;
mod chain;
mod client_config_served;
mod clients;
mod doctor;
mod evict;
mod fixtures;
mod fleet;
mod metrics;
mod oci_cache;
mod operator_metrics;
mod policy;
mod push;
mod ranges;
mod referrers;
mod registry2;
mod registry_proxy;
mod reload;
mod resilience;
mod resume;
mod segments;
mod status_page;
mod trust;
