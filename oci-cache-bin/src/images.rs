//! Image lists as people have them (`talosctl images default`, `kubeadm
//! config images list`, kind's image list, a hand-written file) turned into
//! what the engine fetches: upstream, repository and tag or digest.

use std::fmt;
use std::io::Read;
use std::path::Path;

use oci_cache_core::manifest::Platform;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::reference::{ManifestRef, Reference, Registry, Repository, Tag};
use oci_cache_core::storage::TagKey;

use crate::cli::ListArgs;

/// One image of a list, routed to its configured upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The reference as normalised (`docker.io/library/alpine:3.20`), for
    /// messages and for the name an exported layout records.
    pub(crate) reference: Reference,
    /// The configured upstream it is fetched from.
    pub(crate) upstream: Registry,
    /// The repository as that upstream names it (`library/alpine`).
    pub(crate) repository: Repository,
    /// The tag or digest of the top manifest (a digest when both are given).
    pub(crate) manifest: ManifestRef,
}

impl Target {
    /// Routes `reference` by `mirrors`; an unconfigured registry is an error
    /// that says how to configure it.
    pub(crate) fn new(reference: Reference, mirrors: &MirrorConfig) -> Result<Target, String> {
        let reference = reference.with_default_tag();
        let registry = reference.registry();
        let upstream = mirrors.lookup(registry.as_str()).ok_or_else(|| {
            format!(
                "{reference}: no configured upstream is named {registry}; add it with --upstream {registry}=URL or in the config file"
            )
        })?;
        let repository = upstream
            .upstream_repository(reference.repository())
            .map_err(|e| format!("{reference}: {e}"))?;
        Ok(Target {
            manifest: reference.manifest_ref(),
            upstream: upstream.name.clone(),
            repository,
            reference,
        })
    }

    /// The tag record key of `tag` in this target's repository.
    pub(crate) fn key_for(&self, tag: &Tag) -> TagKey {
        TagKey {
            upstream: self.upstream.clone(),
            repository: self.repository.clone(),
            tag: tag.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reference.fmt(f)
    }
}

/// References from the command line and from `file` (`-` is stdin), in
/// order, duplicates dropped.
///
/// Lines are one reference each; `#` starts a comment; blank lines are
/// skipped; only the first whitespace-separated word counts, so tables
/// whose first column is the image (`crictl images`-like output) work too.
pub(crate) fn read_list(refs: &[String], file: Option<&Path>) -> Result<Vec<Reference>, String> {
    let mut text = String::new();
    if let Some(file) = file {
        let read = if file == Path::new("-") {
            std::io::stdin().read_to_string(&mut text)
        } else {
            std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
        };
        read.map_err(|e| format!("cannot read image list {}: {e}", file.display()))?;
    }
    parse_list(refs.iter().map(String::as_str).chain(text.lines()))
}

fn parse_list<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<Reference>, String> {
    let mut out: Vec<Reference> = Vec::new();
    let mut errors = Vec::new();
    for line in lines {
        let line = line.split('#').next().unwrap_or_default();
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        match word.parse::<Reference>() {
            Ok(reference) => {
                let reference = reference.with_default_tag();
                if !out.contains(&reference) {
                    out.push(reference);
                }
            }
            Err(e) => errors.push(format!("{word:?}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(format!("invalid image references: {}", errors.join("; ")));
    }
    if out.is_empty() {
        return Err("no images given: name them as arguments or with -f FILE (- for stdin)".into());
    }
    Ok(out)
}

/// The images `args` name, routed by `mirrors`.
pub(crate) fn from_args(args: &ListArgs, mirrors: &MirrorConfig) -> Result<Vec<Target>, String> {
    targets(read_list(&args.refs, args.file.as_deref())?, mirrors)
}

/// Parses `--platform` values.
pub(crate) fn platforms(values: &[String]) -> Result<Vec<Platform>, String> {
    values
        .iter()
        .map(|v| v.parse().map_err(|e: oci_cache_core::Error| e.to_string()))
        .collect()
}

/// Routes every reference; collects all routing errors into one message.
pub(crate) fn targets(refs: Vec<Reference>, mirrors: &MirrorConfig) -> Result<Vec<Target>, String> {
    let (ok, errors): (Vec<_>, Vec<_>) = refs
        .into_iter()
        .map(|r| Target::new(r, mirrors))
        .partition(Result::is_ok);
    if !errors.is_empty() {
        let errors: Vec<String> = errors.into_iter().filter_map(Result::err).collect();
        return Err(errors.join("\n"));
    }
    Ok(ok.into_iter().filter_map(Result::ok).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_as_tools_print_them_normalise_and_dedup() {
        let talos = "ghcr.io/siderolabs/flannel:v0.25.7\nregistry.k8s.io/coredns/coredns:v1.11.3\n\
                     # comment line\n\n  alpine   # familiar name\nalpine:latest\n\
                     kindest/node:v1.31.0@sha256:53df588e04085fd41ae12de0c3fe4c72f7013bba32a20e7325357a1ac94ba865\n";
        let refs = parse_list(talos.lines()).unwrap();
        let shown: Vec<String> = refs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "ghcr.io/siderolabs/flannel:v0.25.7",
                "registry.k8s.io/coredns/coredns:v1.11.3",
                "docker.io/library/alpine:latest",
                "docker.io/kindest/node:v1.31.0@sha256:53df588e04085fd41ae12de0c3fe4c72f7013bba32a20e7325357a1ac94ba865",
            ]
        );
    }

    #[test]
    fn bad_lines_and_empty_lists_are_errors_naming_the_line() {
        let e = parse_list(["alpine", "bad//name"].into_iter()).unwrap_err();
        assert!(e.contains("\"bad//name\""), "{e}");
        let e = parse_list(["# nothing"].into_iter()).unwrap_err();
        assert!(e.contains("no images given"), "{e}");
    }

    #[test]
    fn targets_route_by_upstream_and_apply_the_hub_library_rule() {
        let mirrors = MirrorConfig::common();
        let refs = parse_list(["alpine", "ghcr.io/a/b@sha256:53df588e04085fd41ae12de0c3fe4c72f7013bba32a20e7325357a1ac94ba865"].into_iter()).unwrap();
        let t = targets(refs, &mirrors).unwrap();
        assert_eq!(t[0].upstream.as_str(), "docker.io");
        assert_eq!(t[0].repository.as_str(), "library/alpine");
        assert!(matches!(&t[0].manifest, ManifestRef::Tag(tag) if tag.as_str() == "latest"));
        assert!(matches!(t[1].manifest, ManifestRef::Digest(_)));
        let e = targets(
            parse_list(["evil.example/x"].into_iter()).unwrap(),
            &mirrors,
        )
        .unwrap_err();
        assert!(
            e.contains("no configured upstream is named evil.example"),
            "{e}"
        );
    }
}
