//! Manifest and index answers from upstream (first line: the Content-Type,
//! the rest: the body): no panic; what is accepted is a known manifest type
//! and a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_core::cache::KNOWN_MANIFEST_TYPES;
use oci_cache_http::fuzzing::manifest_media_type;

fuzz_target!(|input: &[u8]| {
    let (content_type, body) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&[][..], input),
    };
    let content_type = String::from_utf8_lossy(content_type);
    if let Some(media_type) = manifest_media_type(&content_type, body) {
        assert!(KNOWN_MANIFEST_TYPES.contains(&media_type.as_str()));
        let value: serde_json::Value = serde_json::from_slice(body).expect("accepted body is JSON");
        assert!(value.is_object());
    }
});
