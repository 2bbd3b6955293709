//! Upstream `Link` headers of tag-list pages: no panic; a next page is an
//! absolute http(s) URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::next_link;

fuzz_target!(|input: &str| {
    let values: Vec<&str> = input.split('\n').collect();
    if let Some(next) = next_link(&values, "https://registry.example/v2/a/b/tags/list?n=10") {
        assert!(
            next.starts_with("http://") || next.starts_with("https://"),
            "{input:?} -> {next:?}"
        );
    }
});
