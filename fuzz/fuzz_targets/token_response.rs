//! A token endpoint's JSON answer: no panic, the lifetime is clamped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::{parse_token_response, MAX_TOKEN_LIFETIME};

fuzz_target!(|input: &[u8]| {
    if let Some((token, lifetime)) = parse_token_response(input) {
        assert!(!token.is_empty());
        assert!(lifetime <= MAX_TOKEN_LIFETIME, "{lifetime:?}");
    }
});
