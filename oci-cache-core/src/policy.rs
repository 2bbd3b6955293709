//! The pull policy: allow and deny rules checked before anything is asked
//! of storage or upstream.
//!
//! A [`PullPolicy`] is an ordered list of [`PolicyRule`]s. Each rule names
//! an action and up to three `*`-globs: the upstream (`docker.io`,
//! `*.example`), the repository as the upstream names it (`library/alpine`,
//! not `alpine`; `bitnami/*`) and the tag. A left-out glob matches anything.
//!
//! **The first matching rule decides; no match allows** (default allow).
//! First-match is what firewalls and `.gitignore`-style lists do, so an
//! operator reads the list top to bottom and stops at the first rule that
//! fits; an exception goes above the rule it carves out of.
//!
//! A rule **with** a `tag` glob matches only requests by tag. A rule
//! **without** one matches every request for the repository: manifests by
//! tag and by digest, `HEAD`s, blobs, tag lists. So a repository denied
//! without a tag glob is denied however it is asked for, while a tag rule
//! cannot stop a pull by digest (a digest names no tag). To allow only some
//! tags of a repository, allow them by tag and deny the other tags with
//! `tag = "*"`; a digest pull of that repository is then still allowed.
//!
//! The policy the engine checks is held in a [`SharedPolicy`], which can be
//! swapped while serving (a configuration reload).
//!
//! ```
//! use oci_cache_core::policy::{PolicyAction, PolicyRule, PullPolicy};
//! use oci_cache_core::reference::{ManifestRef, Registry, Repository, Tag};
//!
//! let policy = PullPolicy::new(vec![
//!     PolicyRule::new("no-latest", PolicyAction::Deny).with_tag("latest"),
//!     PolicyRule::new("no-miners", PolicyAction::Deny).with_repository("*/xmrig*"),
//! ])?;
//! let hub = Registry::docker_hub();
//! let alpine = Repository::new("library/alpine")?;
//! let latest = ManifestRef::Tag(Tag::new("latest")?);
//! let three = ManifestRef::Tag(Tag::new("3")?);
//! assert!(policy.check(&hub, &alpine, Some(&latest)).is_err());
//! assert!(policy.check(&hub, &alpine, Some(&three)).is_ok());
//! let miner = Repository::new("someone/xmrig-proxy")?;
//! assert!(policy.check(&hub, &miner, None).is_err(), "blobs of it too");
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::reference::{ManifestRef, Registry, Repository};
use crate::{Error, Result};

/// What a matching [`PolicyRule`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PolicyAction {
    /// Let the pull through (an exception above a broader deny).
    Allow,
    /// Answer `403 DENIED` naming the rule; nothing is asked of upstream.
    Deny,
}

/// One rule of a [`PullPolicy`]. In a config file: a `[[policy.rule]]` table
/// with `name`, `action` (`"allow"` or `"deny"`) and optional `upstream`,
/// `repository` and `tag` globs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyRule {
    /// Named in the `403` answer and the log, so a user knows which rule to ask about.
    pub name: String,
    /// What the rule does when it matches.
    pub action: PolicyAction,
    /// Glob over the upstream's name (`docker.io`); any upstream when left out.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Glob over the repository as the upstream names it (`library/alpine`);
    /// any repository when left out.
    #[serde(default)]
    pub repository: Option<String>,
    /// Glob over the tag; when set, the rule matches requests by tag only.
    #[serde(default)]
    pub tag: Option<String>,
}

impl PolicyRule {
    /// A rule named `name` matching everything until narrowed with the `with_*` methods.
    pub fn new(name: impl Into<String>, action: PolicyAction) -> Self {
        PolicyRule {
            name: name.into(),
            action,
            upstream: None,
            repository: None,
            tag: None,
        }
    }

    /// Narrows the rule to upstreams matching `glob`.
    pub fn with_upstream(mut self, glob: impl Into<String>) -> Self {
        self.upstream = Some(glob.into());
        self
    }

    /// Narrows the rule to repositories matching `glob`.
    pub fn with_repository(mut self, glob: impl Into<String>) -> Self {
        self.repository = Some(glob.into());
        self
    }

    /// Narrows the rule to requests by a tag matching `glob`.
    pub fn with_tag(mut self, glob: impl Into<String>) -> Self {
        self.tag = Some(glob.into());
        self
    }

    fn matches(&self, upstream: &Registry, repository: &Repository, tag: Option<&str>) -> bool {
        let fits = |glob_text: &Option<String>, text: &str| {
            glob_text
                .as_deref()
                .is_none_or(|g| glob(g.as_bytes(), text.as_bytes()))
        };
        let tag_fits = match (&self.tag, tag) {
            (None, _) => true,
            (Some(g), Some(tag)) => glob(g.as_bytes(), tag.as_bytes()),
            (Some(_), None) => false,
        };
        tag_fits
            && fits(&self.upstream, upstream.as_str())
            && fits(&self.repository, repository.as_str())
    }
}

/// Ordered allow/deny rules; see the [module docs](self) for how they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullPolicy {
    rules: Vec<PolicyRule>,
}

impl PullPolicy {
    /// A policy of `rules`, checked: every rule has a unique, non-empty name
    /// and globs without spaces or control characters.
    pub fn new(rules: Vec<PolicyRule>) -> Result<Self> {
        let mut names = HashSet::new();
        for rule in &rules {
            let name = rule.name.trim();
            if name.is_empty() {
                return Err(Error::Config(
                    "a policy rule has an empty name; give every rule a name, which the 403 answer shows".into(),
                ));
            }
            if !names.insert(name) {
                return Err(Error::Config(format!(
                    "two policy rules are named {name:?}; give each rule its own name"
                )));
            }
            for (key, glob_text) in [
                ("upstream", &rule.upstream),
                ("repository", &rule.repository),
                ("tag", &rule.tag),
            ] {
                if let Some(g) = glob_text {
                    if g.is_empty() || g.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(Error::Config(format!(
                            "policy rule {name:?}: {key} glob {g:?} is empty or contains spaces; \
                             leave {key} out to match any"
                        )));
                    }
                }
            }
        }
        Ok(PullPolicy { rules })
    }

    /// The rules, in the order they are checked.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// The rule deciding a request for `repository` of `upstream`, by
    /// `reference` (`None`: a blob or tag list, which names no tag), or
    /// `None` when no rule matches (allowed).
    pub fn decide(
        &self,
        upstream: &Registry,
        repository: &Repository,
        reference: Option<&ManifestRef>,
    ) -> Option<&PolicyRule> {
        let tag = match reference {
            Some(ManifestRef::Tag(tag)) => Some(tag.as_str()),
            _ => None,
        };
        self.rules
            .iter()
            .find(|rule| rule.matches(upstream, repository, tag))
    }

    /// `Ok` when the request is allowed, [`Error::Denied`] naming the rule when not.
    pub fn check(
        &self,
        upstream: &Registry,
        repository: &Repository,
        reference: Option<&ManifestRef>,
    ) -> Result<()> {
        match self.decide(upstream, repository, reference) {
            Some(rule) if rule.action == PolicyAction::Deny => {
                let what = match reference {
                    Some(ManifestRef::Tag(tag)) => format!("{upstream}/{repository}:{tag}"),
                    Some(ManifestRef::Digest(digest)) => {
                        format!("{upstream}/{repository}@{digest}")
                    }
                    None => format!("repository {upstream}/{repository}"),
                };
                tracing::info!(rule = %rule.name, %what, "pull denied by policy");
                Err(Error::Denied {
                    rule: rule.name.clone(),
                    what,
                })
            }
            _ => Ok(()),
        }
    }
}

/// The policy in force, swappable while serving: clones share it, and
/// [`replace`](Self::replace) takes effect for every request that starts after it.
#[derive(Debug, Clone, Default)]
pub struct SharedPolicy(Arc<RwLock<Arc<PullPolicy>>>);

impl SharedPolicy {
    /// A holder of `policy`.
    pub fn new(policy: PullPolicy) -> Self {
        SharedPolicy(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<PullPolicy> {
        // A writer cannot panic half-way (it only swaps an Arc), so a
        // poisoned lock still holds a whole policy.
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    /// Puts `policy` in force (a configuration reload).
    pub fn replace(&self, policy: PullPolicy) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(policy);
    }
}

/// `*`-only glob match (`*` matches any run of characters, `/` and `:`
/// included), iterative with one backtrack point (linear in practice, never
/// exponential).
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if text.get(t) == Some(&c) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hub() -> Registry {
        Registry::docker_hub()
    }

    fn repo(name: &str) -> Repository {
        Repository::new(name).unwrap()
    }

    fn by(text: &str) -> ManifestRef {
        match text.parse() {
            Ok(digest) => ManifestRef::Digest(digest),
            Err(_) => ManifestRef::Tag(crate::reference::Tag::new(text).unwrap()),
        }
    }

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn default_allows_everything() {
        let policy = PullPolicy::default();
        assert!(policy
            .check(&hub(), &repo("library/alpine"), Some(&by("3")))
            .is_ok());
        assert!(policy.check(&hub(), &repo("x/y"), None).is_ok());
    }

    #[test]
    fn a_denied_repository_is_denied_by_tag_digest_and_blob() {
        let policy = PullPolicy::new(vec![PolicyRule::new("no-nginx", PolicyAction::Deny)
            .with_upstream("docker.io")
            .with_repository("library/nginx")])
        .unwrap();
        let nginx = repo("library/nginx");
        for reference in [Some(by("latest")), Some(by(DIGEST)), None] {
            let err = policy
                .check(&hub(), &nginx, reference.as_ref())
                .unwrap_err();
            assert!(
                matches!(&err, Error::Denied { rule, .. } if rule == "no-nginx"),
                "{err}"
            );
            assert!(err.to_string().contains("no-nginx"), "{err}");
        }
        assert!(policy
            .check(&Registry::new("ghcr.io").unwrap(), &nginx, None)
            .is_ok());
        assert!(policy
            .check(&hub(), &repo("library/nginx-extra"), None)
            .is_ok());
    }

    #[test]
    fn first_match_wins_and_tag_rules_leave_digests_alone() {
        let policy = PullPolicy::new(vec![
            PolicyRule::new("alpine-3", PolicyAction::Allow)
                .with_repository("library/alpine")
                .with_tag("3.*"),
            PolicyRule::new("alpine-other-tags", PolicyAction::Deny)
                .with_repository("library/alpine")
                .with_tag("*"),
            PolicyRule::new("nothing-else", PolicyAction::Deny).with_upstream("docker.io"),
        ])
        .unwrap();
        let alpine = repo("library/alpine");
        assert!(policy.check(&hub(), &alpine, Some(&by("3.20"))).is_ok());
        let err = policy
            .check(&hub(), &alpine, Some(&by("edge")))
            .unwrap_err();
        assert!(matches!(err, Error::Denied { rule, .. } if rule == "alpine-other-tags"));
        // No tag: the tag rules do not match; the upstream-wide deny does.
        let err = policy
            .check(&hub(), &alpine, Some(&by(DIGEST)))
            .unwrap_err();
        assert!(matches!(err, Error::Denied { rule, .. } if rule == "nothing-else"));
        assert!(policy
            .check(&Registry::new("ghcr.io").unwrap(), &alpine, None)
            .is_ok());
    }

    #[test]
    fn rules_are_checked_and_swappable() {
        let unnamed = PullPolicy::new(vec![PolicyRule::new(" ", PolicyAction::Deny)]);
        assert!(unnamed.unwrap_err().to_string().contains("empty name"));
        let twice = PullPolicy::new(vec![
            PolicyRule::new("a", PolicyAction::Deny),
            PolicyRule::new("a", PolicyAction::Allow),
        ]);
        assert!(twice.unwrap_err().to_string().contains("\"a\""));
        let spaced = PullPolicy::new(vec![
            PolicyRule::new("a", PolicyAction::Deny).with_tag("x y")
        ]);
        assert!(spaced.unwrap_err().to_string().contains("tag glob"));

        let shared = SharedPolicy::default();
        let clone = shared.clone();
        assert!(clone.current().check(&hub(), &repo("a/b"), None).is_ok());
        shared.replace(PullPolicy::new(vec![PolicyRule::new("all", PolicyAction::Deny)]).unwrap());
        assert!(clone.current().check(&hub(), &repo("a/b"), None).is_err());
    }

    #[test]
    fn rules_deserialize_from_config_tables() {
        let rule: PolicyRule = serde_json::from_str(
            r#"{"name": "n", "action": "deny", "repository": "library/*", "tag": "latest"}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            PolicyRule::new("n", PolicyAction::Deny)
                .with_repository("library/*")
                .with_tag("latest")
        );
        let err = serde_json::from_str::<PolicyRule>(r#"{"name": "n", "action": "block"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant"), "{err}");
        let err =
            serde_json::from_str::<PolicyRule>(r#"{"name": "n", "action": "deny", "repo": "x"}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
