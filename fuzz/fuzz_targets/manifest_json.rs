//! Manifest and index answers from upstream (first line: the Content-Type,
//! the rest: the body): no panic in the client's manifest check nor in core's
//! manifest/index parser; what the check accepts is a known manifest type and
//! a JSON object; a parsed index serializes and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_core::manifest::media_type::KNOWN_MANIFEST_TYPES;
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::Manifest;
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
    let digest = Digest::sha256_of(body);
    match Manifest::parse(&digest, body) {
        // Indexes serialize (export writes them): they must parse back equal.
        Ok(Manifest::Index(index)) => {
            let bytes = serde_json::to_vec(&index).expect("a parsed index serializes");
            let again = Manifest::parse(&digest, &bytes).unwrap_or_else(|e| {
                panic!("{:?} does not parse back: {e}", String::from_utf8_lossy(&bytes))
            });
            assert_eq!(again, Manifest::Index(index));
        }
        Ok(Manifest::Image(image)) => assert!(image.blobs().count() >= 1),
        Err(_) => {}
    }
});
