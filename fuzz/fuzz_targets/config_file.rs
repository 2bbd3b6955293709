//! The `oci-cache.toml` configuration file, parsed and validated exactly as
//! `serve` and `check-config` do: no panic, and every refusal says something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_bin::fuzzing::check_config_text;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(message) = check_config_text(text) {
        assert!(!message.trim().is_empty(), "an empty error for {text:?}");
    }
});
