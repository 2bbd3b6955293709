//! Reads the S3 test server's coordinates from the environment
//! (`eval "$(scripts/s3-server start)"` sets them); shared by the test binaries.

// Tests: failing loudly, and saying so on stderr, is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

/// True when a missing S3 server must fail the run instead of skipping.
pub(crate) fn s3_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("OCI_CACHE_REQUIRE_S3").is_ok_and(|v| v == "1")
}

/// Skips loudly, or fails when S3 is required.
pub(crate) fn skip_s3(why: &str) {
    assert!(
        !s3_required(),
        "S3 tests are required here (CI=true or OCI_CACHE_REQUIRE_S3=1): {why}; \
         run `eval \"$(scripts/s3-server start)\"` and build with --features s3"
    );
    eprintln!("SKIPPED S3: {why} (scripts/s3-server start)");
}

/// A config for the test bucket under a fresh prefix, or `None` after skipping.
#[cfg(feature = "s3")]
pub(crate) fn s3_config() -> Option<oci_cache_core::storage::S3Config> {
    let Ok(endpoint) = std::env::var("OCI_CACHE_TEST_S3_ENDPOINT") else {
        skip_s3("set OCI_CACHE_TEST_S3_ENDPOINT");
        return None;
    };
    Some(oci_cache_core::storage::S3Config {
        bucket: std::env::var("OCI_CACHE_TEST_S3_BUCKET")
            .unwrap_or_else(|_| "oci-cache-test".to_owned()),
        prefix: Some(format!("test-{}", uuid::Uuid::new_v4().simple())),
        endpoint: Some(endpoint),
        region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned())),
        path_style: true,
        ..Default::default()
    })
}
