//! Integration tests of oci-cache-core, one binary with a module per topic.

mod storage;
