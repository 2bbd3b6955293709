//! The integration test binary of oci-cache-core: one module per topic.

mod reference_vectors;
