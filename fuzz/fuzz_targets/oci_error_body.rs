//! The OCI error body (`{"errors":[…]}`): no panic, and parse -> serialize
//! -> parse gives an equal envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::ErrorEnvelope;

fuzz_target!(|input: &[u8]| {
    let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(input) else {
        return;
    };
    let bytes = serde_json::to_vec(&envelope).expect("an envelope serializes");
    let again: ErrorEnvelope = serde_json::from_slice(&bytes).expect("and parses back");
    assert_eq!(again, envelope);
});
