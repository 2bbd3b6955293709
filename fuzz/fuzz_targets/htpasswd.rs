//! The htpasswd file of client authentication: no panic while parsing or
//! checking a password, and a refused file names the line at fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_http::fuzzing::htpasswd_verify;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // The first line is `user:password` to check against the rest.
    let (login, file) = text.split_once('\n').unwrap_or((text, ""));
    let (user, password) = login.split_once(':').unwrap_or((login, ""));
    match htpasswd_verify(file, user, password) {
        Ok(_) => {}
        Err(message) => assert!(message.starts_with("line "), "{message}"),
    }
});
