//! Every relative link of the pages resolves: the file exists, and an
//! `#anchor` names a heading of it (GitHub's rules for heading anchors).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::{pages, report, root, split_fences};

/// The anchor GitHub gives a heading: lower case, punctuation dropped,
/// spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a Markdown text; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> HashSet<String> {
    let (_, prose) = split_fences(text);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut anchors = HashSet::new();
    for (_, line) in prose {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if hashes == 0 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug = slug(&line[hashes..]);
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The targets of `[text](target)` links on a line.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(&after[..end]);
        rest = &after[end..];
    }
    targets
}

/// `base/../x` → `x`, without touching the filesystem.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root.join(&page)).unwrap();
        let (_, prose) = split_fences(&text);
        for (line_no, line) in prose {
            for target in link_targets(line) {
                let is_external = target.contains("://") || target.starts_with("mailto:");
                if is_external || target.contains(char::is_whitespace) {
                    continue;
                }
                checked += 1;
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if file.is_empty() {
                    page.clone()
                } else {
                    normalise(&page.parent().unwrap_or(Path::new("")).join(file))
                };
                let where_ = format!("{}:{line_no}: link `{target}`", page.display());
                let full = root.join(&resolved);
                if !full.exists() {
                    problems.push(format!(
                        "{where_}: {} does not exist; fix the path (relative to {})",
                        resolved.display(),
                        page.parent().unwrap_or(Path::new(".")).display()
                    ));
                    continue;
                }
                if anchor.is_empty() || full.is_dir() {
                    continue;
                }
                let target_text = std::fs::read_to_string(&full).unwrap();
                if !anchors(&target_text).contains(anchor) {
                    problems.push(format!(
                        "{where_}: {} has no heading with anchor #{anchor}; \
                         link to one of its headings (a heading `## Foo bar` is #foo-bar)",
                        resolved.display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: is the page list right?"
    );
    report("broken links in the documentation", &problems);
}

#[test]
fn anchors_follow_github_rules() {
    let text = "# Top\n## Running it the way you run registry:2\n### `[upstream_client]`\n\
                ```sh\n# not a heading\n```\n## Top\n";
    let anchors = anchors(text);
    for expected in [
        "top",
        "running-it-the-way-you-run-registry2",
        "upstream_client",
        "top-1",
    ] {
        assert!(anchors.contains(expected), "{expected} not in {anchors:?}");
    }
    assert!(!anchors.contains("not-a-heading"));
}
