//! Documentation checks: the pages in `docs/`, the top-level README and the
//! crate READMEs are part of the product, so they are tested like it.
//!
//! - `links`: every relative link resolves, file and `#anchor`;
//! - `config_reference`: the key tables of `docs/configuration.md` list
//!   exactly the keys the configuration parser accepts;
//! - `examples`: every TOML and YAML block is tagged with what it is, and
//!   every oci-cache, registry:2 and Talos configuration block is accepted by
//!   `oci-cache check-config`.
//!
//! Each check collects every problem and fails once, listing them with the
//! file, the line and what to change.

use std::path::{Path, PathBuf};

mod config_reference;
mod examples;
mod links;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every Markdown page users read: `README.md`, `docs/*.md` and the crate
/// READMEs, as paths relative to the workspace root.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(&root).unwrap().to_owned())
        .collect();
    docs.sort();
    pages.extend(docs);
    for krate in ["oci-cache-core", "oci-cache-http", "oci-cache-bin"] {
        let readme = Path::new(krate).join("README.md");
        if root.join(&readme).exists() {
            pages.push(readme);
        }
    }
    pages
}

/// A fenced code block of a page.
#[derive(Debug)]
struct Fence {
    /// 1-based line of the opening fence.
    line: usize,
    /// The words after the backticks (`toml oci-cache` → `["toml", "oci-cache"]`).
    info: Vec<String>,
    /// The block's text, indentation of the fence removed.
    body: String,
}

/// Splits `text` into its fenced code blocks and the prose lines outside
/// them (with their 1-based line numbers).
fn split_fences(text: &str) -> (Vec<Fence>, Vec<(usize, &str)>) {
    let mut fences = Vec::new();
    let mut prose = Vec::new();
    let mut open: Option<(usize, usize, Vec<String>, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None if trimmed.starts_with("```") => {
                let info = trimmed
                    .trim_start_matches('`')
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                open = Some((i + 1, indent, info, Vec::new()));
            }
            None => prose.push((i + 1, line)),
            Some(_) if trimmed.starts_with("```") => {
                let (line, _, info, body) = open.take().unwrap();
                let mut body = body.join("\n");
                body.push('\n');
                fences.push(Fence { line, info, body });
            }
            Some((_, indent, _, body)) => {
                body.push(line.get(*indent..).unwrap_or(line.trim_start()));
            }
        }
    }
    (fences, prose)
}

/// Fails with every problem found, one per line, under `what`.
fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}\n",
        problems.len(),
        problems.join("\n  ")
    );
}
