//! `oci-cache`: the pull-through cache server and its command-line tools.
//! Everything is in the library target (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    oci_cache_bin::run()
}
