//! `WWW-Authenticate` challenges from upstream: no panic, and parse ->
//! render (every value quoted) -> parse gives the same challenges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::{parse_challenges, render_challenges};

fuzz_target!(|input: &str| {
    let challenges = parse_challenges(input);
    let rendered = render_challenges(&challenges);
    let again = parse_challenges(&rendered);
    assert_eq!(again, challenges, "{input:?} -> {rendered:?}");
});
