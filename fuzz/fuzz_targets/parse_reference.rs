//! Any string: parsing must not panic, and neither may the forms of a success.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_core::reference::Reference;

fuzz_target!(|input: &str| {
    match Reference::parse(input) {
        Ok(reference) => {
            let canonical = reference.to_string();
            let familiar = reference.familiar();
            assert!(canonical.len() >= familiar.len());
            let _ = reference.name();
            let _ = reference.manifest_ref();
        }
        Err(err) => {
            assert!(err.offset() <= input.len());
            let _ = err.to_string();
        }
    }
});
