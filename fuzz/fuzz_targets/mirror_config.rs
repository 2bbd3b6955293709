//! Mirror configuration files read at start: a Talos machine config
//! (first byte even) or a containerd `hosts.toml` (odd). No panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_cache_core::mirror::{containerd, talos};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector % 2 == 0 {
        let _ = talos::parse(text, "fuzz.yaml");
    } else {
        let _ = containerd::parse_hosts_toml("docker.io", text, "fuzz/hosts.toml");
    }
});
