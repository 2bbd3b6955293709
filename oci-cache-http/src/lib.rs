//! The HTTP side of **oci-cache**: a hyper service for the OCI pull API and
//! an upstream registry client that implements
//! [`oci_cache_core::upstream::Upstream`].
