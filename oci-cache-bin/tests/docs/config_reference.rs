//! The configuration reference cannot drift from the parser: for each table
//! of `docs/configuration.md` ("The configuration file, key by key"), the
//! keys its table lists are exactly the keys `oci-cache check-config`
//! accepts there. The accepted keys come from the parser itself: a file with
//! an unknown key in that table is refused with serde's "unknown field `x`,
//! expected one of `a`, `b`, …", which names every key the code knows.

use std::collections::BTreeSet;

use super::{report, root, split_fences};
use crate::cli::{oci_cache_env, text};

const PAGE: &str = "docs/configuration.md";
const SECTION: &str = "## The configuration file, key by key";
/// A key no version of the parser accepts.
const UNKNOWN: &str = "zz_not_a_key";

/// For each `###` heading of the section: config files that put
/// [`UNKNOWN`] into that table (`{}` marks where), and keys the table
/// accepts that serde does not list (an internally tagged enum's tag).
/// A new table in the code needs an entry here and a table in the page.
fn probes(heading: &str) -> Option<(Vec<String>, &'static [&'static str])> {
    let upstream = "[[upstream]]\nname = \"a.example\"\nurl = \"https://a.example\"\n";
    let files: Vec<String> = match heading {
        "Top level" => vec!["{} = 1\n".into()],
        "`[storage]`" => ["filesystem", "memory", "s3"]
            .iter()
            .map(|kind| format!("[storage]\nkind = \"{kind}\"\n{{}} = 1\n"))
            .collect(),
        "`[[upstream]]`" => vec![format!("{upstream}{{}} = 1\n")],
        "`[[listener]]`" => vec!["[[listener]]\naddr = \"127.0.0.1:5001\"\n{} = 1\n".into()],
        "`mirrors` entries" => vec![format!(
            "{upstream}mirrors = [{{ url = \"https://m.example\", {{}} = 1 }}]\n"
        )],
        "`credentials`" => vec![
            format!("{upstream}credentials = {{ username = \"u\", {{}} = 1 }}\n"),
            format!(
                "{upstream}mirrors = [{{ url = \"https://m.example\", \
                 credentials = {{ username = \"u\", {{}} = 1 }} }}]\n"
            ),
        ],
        "`tls` of an endpoint" => vec![
            format!("{upstream}tls = {{ {{}} = 1 }}\n"),
            format!(
                "{upstream}mirrors = [{{ url = \"https://m.example\", tls = {{ {{}} = 1 }} }}]\n"
            ),
        ],
        "`[[policy.rule]]`" => {
            vec!["[[policy.rule]]\nname = \"a\"\naction = \"deny\"\n{} = 1\n".into()]
        }
        "`[cache]`"
        | "`[upstream_client]`"
        | "`[limits]`"
        | "`[tls]`"
        | "`[tls.acme]`"
        | "`[auth]`"
        | "`[fleet]`"
        | "`[fleet.lease]`" => {
            let table = heading.trim_matches('`');
            vec![format!("{table}\n{{}} = 1\n")]
        }
        _ => return None,
    };
    let implicit: &[&str] = if heading == "`[storage]`" {
        &["kind"]
    } else {
        &[]
    };
    Some((files, implicit))
}

/// The keys serde lists after "unknown field `UNKNOWN`": "expected one of
/// `a`, `b`", "expected `a` or `b`", "expected `a`" or "there are no fields".
fn accepted_keys(file: &str) -> Result<BTreeSet<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, file).unwrap();
    let out = oci_cache_env(&["check-config", path.to_str().unwrap()], &[]);
    let stderr = text(&out.stderr);
    let marker = format!("unknown field `{UNKNOWN}`");
    let Some(at) = stderr.find(&marker) else {
        return Err(format!(
            "check-config did not refuse the unknown key (exit {:?}); probe file:\n{file}\nstderr:\n{stderr}",
            out.status.code()
        ));
    };
    let listed = stderr[at + marker.len()..].lines().next().unwrap_or("");
    Ok(listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect())
}

/// `### heading` → the keys in the first column of its table rows
/// (`` | `client_cert`, `client_key` | `` gives both), with line numbers.
fn documented_tables() -> Vec<(String, usize, BTreeSet<String>)> {
    let text = std::fs::read_to_string(root().join(PAGE)).unwrap();
    let (_, prose) = split_fences(&text);
    let mut in_section = false;
    let mut tables: Vec<(String, usize, BTreeSet<String>)> = Vec::new();
    for (line_no, line) in prose {
        if line.starts_with("## ") {
            in_section = line.trim() == SECTION;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            tables.push((heading.trim().to_owned(), line_no, BTreeSet::new()));
        } else if let (Some(first_cell), Some(table)) = (
            line.strip_prefix('|')
                .and_then(|rest| rest.split('|').next()),
            tables.last_mut(),
        ) {
            let keys = first_cell.split('`').skip(1).step_by(2);
            table.2.extend(keys.map(str::to_owned));
        }
    }
    tables
}

#[test]
fn configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let tables = documented_tables();
    assert!(
        tables.len() >= 10,
        "{PAGE}: section {SECTION:?} not found or has too few tables: {:?}",
        tables.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let mut problems = Vec::new();
    for (heading, line, documented) in &tables {
        let Some((files, implicit)) = probes(heading) else {
            problems.push(format!(
                "{PAGE}:{line}: table `### {heading}` has no probe; add one to \
                 `probes` in oci-cache-bin/tests/docs/config_reference.rs"
            ));
            continue;
        };
        let mut accepted: BTreeSet<String> = implicit.iter().map(|k| (*k).to_owned()).collect();
        for file in files {
            match accepted_keys(&file.replace("{}", UNKNOWN)) {
                Ok(keys) => accepted.extend(keys),
                Err(e) => problems.push(format!("{PAGE}:{line}: `### {heading}`: {e}")),
            }
        }
        for key in accepted.difference(documented) {
            problems.push(format!(
                "{PAGE}:{line}: `### {heading}`: the parser accepts `{key}` but the table \
                 does not document it; add a row `| `{key}` | default | meaning |`"
            ));
        }
        for key in documented.difference(&accepted) {
            problems.push(format!(
                "{PAGE}:{line}: `### {heading}`: documents `{key}`, which the parser \
                 refuses; remove the row or fix the key's name"
            ));
        }
    }
    report(
        "the configuration reference and the parser disagree",
        &problems,
    );
}
