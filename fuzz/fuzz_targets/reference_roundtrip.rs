//! parse -> Display -> parse gives an equal reference; inputs that do not
//! parse are rejected so the corpus keeps only valid references to mutate.
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};
use oci_cache_core::reference::Reference;

fuzz_target!(|input: &str| -> Corpus {
    let Ok(reference) = Reference::parse(input) else {
        return Corpus::Reject;
    };
    let canonical = reference.to_string();
    let again = Reference::parse(&canonical)
        .unwrap_or_else(|err| panic!("{input:?} -> {canonical:?} does not re-parse: {err}"));
    assert_eq!(again, reference, "{input:?} -> {canonical:?}");
    assert_eq!(again.to_string(), canonical);
    Corpus::Keep
});
