//! Golden vectors ported from Go's `distribution/reference` (see the header of
//! `data/reference_vectors.tsv`), and property tests of the parser.

use oci_cache_core::reference::{ParseErrorKind, Reference};
use proptest::prelude::*;

const VECTORS: &str = include_str!("data/reference_vectors.tsv");

/// One row of the table.
struct Case {
    line: usize,
    name: String,
    input: String,
    expected: Expected,
    familiar: Option<String>,
    /// Go's familiar form of some names does not parse back (see the TSV header).
    familiar_reparses: bool,
}

enum Expected {
    Canonical(String),
    Error {
        kind: String,
        offset: Option<usize>,
    },
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                other => panic!("unknown escape \\{other:?} in {field:?}"),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (index, line) in VECTORS.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "line {}: want 4 tab-separated fields", index + 1);
        let expected = match fields[2].strip_prefix("error:") {
            Some(error) => {
                let (kind, offset) = match error.split_once('@') {
                    Some((kind, offset)) => (kind, Some(offset.parse().unwrap())),
                    None => (error, None),
                };
                Expected::Error {
                    kind: kind.to_owned(),
                    offset,
                }
            }
            None => Expected::Canonical(fields[2].to_owned()),
        };
        cases.push(Case {
            line: index + 1,
            name: fields[0].to_owned(),
            input: unescape(fields[1]),
            expected,
            familiar: (fields[3] != "-").then(|| fields[3].trim_start_matches('~').to_owned()),
            familiar_reparses: !fields[3].starts_with('~'),
        });
    }
    cases
}

#[test]
fn golden_vectors() {
    let cases = cases();
    assert!(cases.len() > 150, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = Reference::parse(&case.input);
        let label = format!("{} (line {}, input {:?})", case.name, case.line, case.input);
        match (&case.expected, outcome) {
            (Expected::Canonical(canonical), Ok(reference)) => {
                let shown = reference.to_string();
                if &shown != canonical {
                    failures.push(format!("{label}: got {shown}, want {canonical}"));
                    continue;
                }
                // The registry is everything before the first '/' of the canonical form.
                let (registry, repository) = canonical.split_once('/').unwrap();
                assert_eq!(reference.registry().as_str(), registry, "{label}");
                assert!(repository.starts_with(reference.repository().as_str()), "{label}");
                match Reference::parse(&shown) {
                    Ok(again) if again == reference => {}
                    other => failures.push(format!("{label}: {shown} re-parses to {other:?}")),
                }
                let familiar = reference.familiar();
                if let Some(want) = &case.familiar {
                    if &familiar != want {
                        failures.push(format!("{label}: familiar {familiar}, want {want}"));
                    }
                    let reparsed = Reference::parse(&familiar);
                    if case.familiar_reparses != (reparsed.as_ref() == Ok(&reference)) {
                        failures.push(format!("{label}: familiar {familiar} re-parses to {reparsed:?}"));
                    }
                }
            }
            (Expected::Canonical(canonical), Err(err)) => {
                failures.push(format!("{label}: want {canonical}, got error {err}"));
            }
            (Expected::Error { kind, offset }, Err(err)) => {
                if err.kind().as_str() != kind || offset.is_some_and(|at| at != err.offset()) {
                    failures.push(format!(
                        "{label}: got {}@{}, want {kind}@{offset:?} ({err})",
                        err.kind(),
                        err.offset()
                    ));
                }
                assert_eq!(err.input(), case.input, "{label}");
                assert!(err.offset() <= case.input.len(), "{label}: offset past the end");
            }
            (Expected::Error { kind, .. }, Ok(reference)) => {
                failures.push(format!("{label}: want error {kind}, parsed as {reference}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|case| case.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before);
}

#[test]
fn error_kind_names_are_stable() {
    let kinds = [
        (ParseErrorKind::Empty, "empty"),
        (ParseErrorKind::InvalidFormat, "invalid_format"),
        (ParseErrorKind::Uppercase, "uppercase"),
        (ParseErrorKind::NameTooLong, "name_too_long"),
        (ParseErrorKind::InvalidTag, "invalid_tag"),
        (ParseErrorKind::InvalidDomain, "invalid_domain"),
        (ParseErrorKind::InvalidDigest, "invalid_digest"),
        (ParseErrorKind::IdentifierNotName, "identifier_not_name"),
        (ParseErrorKind::DigestUnsupported, "digest_unsupported"),
        (ParseErrorKind::DigestInvalidLength, "digest_invalid_length"),
    ];
    for (kind, name) in kinds {
        assert_eq!(kind.as_str(), name);
    }
}

/// Strings close to the grammar, so the properties reach the interesting paths.
fn reference_like() -> impl Strategy<Value = String> {
    let component = "[a-z0-9]{1,6}([._-]{1,2}[a-z0-9]{1,6}){0,2}";
    let domain = prop_oneof![
        Just(String::new()),
        Just("docker.io/".to_owned()),
        Just("index.docker.io/".to_owned()),
        Just("localhost:5000/".to_owned()),
        Just("[::1]:5000/".to_owned()),
        "[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,8}){0,2}(:[0-9]{1,5})?/",
    ];
    let path = prop::collection::vec(component, 1..4).prop_map(|parts| parts.join("/"));
    let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}");
    let digest = prop::option::of(prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha512:[0-9a-f]{128}",
        "[a-zA-Z]{1,6}:[0-9a-fA-F]{30,70}",
    ]);
    (domain, path, tag, digest).prop_map(|(domain, path, tag, digest)| {
        let mut out = domain;
        out.push_str(&path);
        if let Some(tag) = tag {
            out.push(':');
            out.push_str(&tag);
        }
        if let Some(digest) = digest {
            out.push('@');
            out.push_str(&digest);
        }
        out
    })
}

fn check_round_trip(input: &str) -> Result<(), TestCaseError> {
    match Reference::parse(input) {
        Ok(reference) => {
            let shown = reference.to_string();
            let again = Reference::parse(&shown);
            prop_assert_eq!(again.as_ref(), Ok(&reference), "{} -> {}", input, shown);
            // Normalising is idempotent.
            prop_assert_eq!(again.map(|r| r.to_string()), Ok(shown));
            let familiar = reference.familiar();
            prop_assert!(!familiar.is_empty());
        }
        Err(err) => {
            prop_assert_eq!(err.input(), input);
            prop_assert!(err.offset() <= input.len(), "{:?}: offset {}", input, err.offset());
            prop_assert!(err.to_string().starts_with("invalid reference "));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_reparses_to_equal_value(input in reference_like()) {
        check_round_trip(&input)?;
    }

    #[test]
    fn any_unicode_string_is_handled(input in "\\PC{0,80}") {
        check_round_trip(&input)?;
    }

    #[test]
    fn any_reference_alphabet_string_is_handled(input in "[a-zA-Z0-9._:/@\\[\\]-]{0,60}") {
        check_round_trip(&input)?;
    }

    #[test]
    fn grammar_shaped_inputs_parse(
        path in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}",
    ) {
        let reference = Reference::parse(&format!("{path}:{tag}"));
        prop_assert!(reference.is_ok(), "{:?}", reference);
    }
}
