//! A client's `Range` header: no panic, and a parsed range rendered back as
//! `bytes=…` parses to the same range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::parse_range;

fuzz_target!(|input: &str| {
    let Some(range) = parse_range(input) else {
        return;
    };
    let rendered = match range {
        (Some(start), Some(end)) => {
            assert!(start <= end, "{input:?}");
            format!("bytes={start}-{end}")
        }
        (Some(start), None) => format!("bytes={start}-"),
        (None, Some(n)) => format!("bytes=-{n}"),
        (None, None) => panic!("{input:?} parsed to an empty range"),
    };
    assert_eq!(parse_range(&rendered), Some(range), "{input:?} -> {rendered:?}");
});
