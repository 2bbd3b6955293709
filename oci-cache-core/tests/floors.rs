//! Core reads bottom-up (issue 23): no module of `src/` imports from a module
//! on a higher floor, and the modules import each other in no circle.
//!
//! The floors, lowest first:
//!
//! ```text
//! digest, duration, file_io          leaf vocabulary and helpers
//! reference                          names: Reference, Repository, Tag, ManifestRef
//! error                              the crate's Error (names references and digests)
//! storage, mirror, manifest, observe what is stored, where upstreams are, what it means, events;
//!   bounds, policy, referrers        the allowed ranges of settings; the pull policy; OCI 1.1 referrers
//! upstream, health                   the engine's view of a registry; storage probes;
//!   fleet                            fill leases and peer fetches between replicas
//! cache, hosted, evict               the engines
//! testing                            test support (feature `testing`), may use anything
//! ```
//!
//! The check reads every `crate::…` path in the non-test code of each
//! top-level module (`use` lines, grouped or not, and inline paths), maps the
//! crate root's re-exports (`crate::Error`) to the module they come from, and
//! fails on an import from a higher floor or a cycle between modules. Test
//! code (`tests.rs`, `tests/` directories, an inline `#[cfg(test)] mod`) may
//! reach up: it builds engines to test a lower module with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, lowest first. A module may import from its own floor and the
/// floors below it.
const FLOORS: &[&[&str]] = &[
    &["digest", "duration", "file_io", "unreadable"],
    &["reference"],
    &["error"],
    &[
        "storage",
        "mirror",
        "manifest",
        "observe",
        "bounds",
        "policy",
        "referrers",
    ],
    &["upstream", "health", "fleet"],
    &["cache", "hosted", "evict"],
    &["testing"],
];

/// Imports the checks let through, each with the reason it is still there.
/// The last test fails once a pair is no longer needed, so the list only shrinks.
///
/// - `digest` → `error`: [`DigestVerifier`] (the streaming check every verified
///   write and fill runs) reports a mismatch as the crate's `Error`, which in
///   turn names digests. The way out is to move the verifier up to the storage
///   floor beside `write_verified` (a public path change, not done here).
///
/// [`DigestVerifier`]: oci_cache_core::digest::DigestVerifier
const ALLOWED: &[(&str, &str)] = &[("digest", "error")];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a source file belongs to (`cache/blob/mod.rs` →
/// `cache`), or `None` for `lib.rs` and test files.
fn module_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.last()?;
    if file == "lib.rs"
        || file == "tests.rs"
        || parts[..parts.len() - 1].iter().any(|p| p == "tests")
    {
        return None;
    }
    let first = &parts[0];
    Some(first.strip_suffix(".rs").unwrap_or(first).to_owned())
}

/// The source without comments and without an inline `#[cfg(test)] mod … { … }`
/// (by convention the last item of a file, so everything from it on is dropped).
fn non_test_code(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .take(3)
                .any(|next| next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{'))
        {
            end = i;
            break;
        }
    }
    lines[..end]
        .iter()
        .filter(|line| !line.trim_start().starts_with("//"))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::` path in `code`: `crate::cache::X` and
/// `crate::{cache::X, storage::{Y, Z}, Error}` give `cache`, `storage`, `Error`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.extend(first_ident(&item));
        } else {
            found.extend(first_ident(rest));
        }
    }
    found
}

fn first_ident(text: &str) -> Option<String> {
    let ident: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// The crate root's `pub use module::{Names}` lines: name → module.
fn root_reexports(lib_rs: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim_end_matches(';');
        let Some((module, names)) = path.split_once("::") else {
            continue;
        };
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            map.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    map
}

/// Module → the modules its non-test code imports from.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib_rs);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Some(module) = module_of(file.strip_prefix(src).unwrap()) else {
            continue;
        };
        let code = non_test_code(&std::fs::read_to_string(&file).unwrap());
        let imports = graph.entry(module.clone()).or_default();
        for name in crate_paths(&code) {
            let target = if floor_of(&name).is_some() {
                name
            } else if let Some(module) = reexports.get(&name) {
                module.clone()
            } else {
                panic!(
                    "{}: `crate::{name}` is neither a module listed in FLOORS nor a root re-export; \
                     put a new module on its floor in tests/floors.rs",
                    file.display()
                );
            };
            if target != module {
                imports.insert(target);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every import from a higher floor, as `from → to` lines.
fn upward_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut upward = Vec::new();
    for (from, imports) in graph {
        let from_floor = floor_of(from).unwrap_or_else(|| {
            panic!("module `{from}` is on no floor: put it on its floor in tests/floors.rs")
        });
        for to in imports {
            let to_floor = floor_of(to).unwrap_or(usize::MAX);
            if to_floor > from_floor && !ALLOWED.contains(&(from.as_str(), to.as_str())) {
                upward.push(format!(
                    "{from} (floor {from_floor}) → {to} (floor {to_floor})"
                ));
            }
        }
    }
    upward
}

/// A cycle between modules, ignoring [`ALLOWED`], as `a → b → a`.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node);
            return Some(cycle.join(" → "));
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if ALLOWED.contains(&(node, next.as_str())) {
                continue;
            }
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_from_a_higher_floor() {
    let graph = import_graph(&src_dir());
    let upward = upward_imports(&graph);
    assert!(
        upward.is_empty(),
        "upward imports in oci-cache-core (move the type down to the lowest module that uses it, \
         re-exported at its old path):\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn modules_import_each_other_in_no_circle() {
    let graph = import_graph(&src_dir());
    assert_eq!(
        find_cycle(&graph),
        None,
        "modules of oci-cache-core import each other in a circle"
    );
}

#[test]
fn every_allowed_import_is_still_there() {
    let graph = import_graph(&src_dir());
    for (from, to) in ALLOWED {
        assert!(
            graph
                .get(*from)
                .is_some_and(|imports| imports.contains(*to)),
            "{from} no longer imports {to}: remove the pair from ALLOWED in tests/floors.rs"
        );
    }
}

#[test]
fn the_check_sees_grouped_nested_and_inline_paths() {
    let code = non_test_code(
        "use crate::{\n    digest::Digest,\n    storage::{Record, RecordKey},\n    Error,\n};\n\
         // use crate::cache::Commented;\n\
         fn f() -> oci_cache_core::cache::X { crate::upstream::thing() }\n\
         #[cfg(test)]\nmod tests {\n    use crate::hosted::Hosted;\n}\n",
    );
    let paths: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(paths, ["Error", "digest", "storage", "upstream"]);
}

#[test]
fn the_check_fails_on_an_upward_import_and_on_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph
        .entry("reference".into())
        .or_default()
        .insert("upstream".into());
    assert_eq!(
        upward_imports(&graph),
        ["reference (floor 1) → upstream (floor 4)"]
    );

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph
        .entry("cache".into())
        .or_default()
        .insert("hosted".into());
    graph
        .entry("hosted".into())
        .or_default()
        .insert("cache".into());
    assert!(upward_imports(&graph).is_empty());
    assert_eq!(
        find_cycle(&graph).as_deref(),
        Some("cache → hosted → cache")
    );
}
