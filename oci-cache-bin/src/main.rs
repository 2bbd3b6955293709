//! `oci-cache`: the pull-through cache server and its command-line tools.

fn main() {}
