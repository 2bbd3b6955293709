//! Parse image references the way `docker pull` and containerd do.
//!
//! ```sh
//! cargo run -p oci-cache-core --example parse -- alpine ghcr.io/org/app:v1 localhost:5000/x@sha256:...
//! ```

use oci_cache_core::reference::Reference;

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let inputs = if inputs.is_empty() {
        vec!["alpine".to_owned(), "ghcr.io/org/app:v1".to_owned()]
    } else {
        inputs
    };
    for input in inputs {
        match input.parse::<Reference>() {
            Ok(reference) => {
                let reference = reference.with_default_tag();
                #[allow(clippy::print_stdout)]
                {
                    println!("{input}");
                    println!("  canonical:  {reference}");
                    println!("  familiar:   {}", reference.familiar());
                    println!("  registry:   {}", reference.registry());
                    println!("  repository: {}", reference.repository());
                    println!("  manifest:   {}", reference.manifest_ref());
                }
            }
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{input}: {e}");
                }
            }
        }
    }
}
