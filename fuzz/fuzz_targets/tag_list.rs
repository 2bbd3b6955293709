//! An upstream tag-list page: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::parse_tag_page;

fuzz_target!(|input: &[u8]| {
    let _ = parse_tag_page(input);
});
