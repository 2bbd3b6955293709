//! `--local-registry HOST:PORT[/PREFIX]`: the registry name developers push
//! to, which the mirror serves from its hosted repositories (`--local-prefix`).

/// The name developers push to (`--local-registry`), served by the mirror's
/// hosted repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalRegistry {
    /// `host:port`: the `certs.d` directory name containerd looks up.
    authority: String,
    /// The repository prefix pushed under (`local`), if given.
    prefix: Option<String>,
}

impl LocalRegistry {
    /// Accepts `host[:port][/prefix]`, e.g. `localhost:5001/local`.
    pub(crate) fn parse(text: &str) -> Result<LocalRegistry, String> {
        let bad = |why: &str| {
            format!("invalid --local-registry {text:?}: {why}; write it like localhost:5001/local (the registry name developers push to, then the mirror's --local-prefix)")
        };
        if text.contains("://") {
            return Err(bad("give no scheme"));
        }
        let (authority, prefix) = match text.split_once('/') {
            Some((authority, prefix)) => (
                authority,
                Some(prefix.trim_end_matches('/')).filter(|p| !p.is_empty()),
            ),
            None => (text, None),
        };
        if authority.is_empty() {
            return Err(bad("the host is missing"));
        }
        if authority.contains(['?', '#', '@']) || authority.contains(char::is_whitespace) {
            return Err(bad("the host is HOST or HOST:PORT"));
        }
        let prefix_ok = |p: &str| {
            !p.is_empty()
                && p.split('/').all(|c| {
                    !c.is_empty()
                        && c.chars().all(|ch| {
                            ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                        })
                })
        };
        match prefix {
            Some(p) if !prefix_ok(p) => Err(bad(
                "the prefix is a repository path: lowercase letters, digits, '.', '_', '-' and '/'",
            )),
            _ => Ok(LocalRegistry {
                authority: authority.to_owned(),
                prefix: prefix.map(str::to_owned),
            }),
        }
    }

    /// `host[:port]`.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// `host[:port]/prefix` as given (`authority` alone without a prefix):
    /// the name an image is pushed and pulled under.
    pub(crate) fn name(&self) -> String {
        self.under(&self.authority)
    }

    /// `authority` followed by this registry's prefix, if any.
    pub(crate) fn under(&self, authority: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{authority}/{prefix}"),
            None => authority.to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_registries_split_into_host_and_prefix() {
        let r = LocalRegistry::parse("localhost:5001/local").unwrap();
        assert_eq!(r.authority(), "localhost:5001");
        assert_eq!(r.name(), "localhost:5001/local");
        assert_eq!(r.under("kind-registry:5000"), "kind-registry:5000/local");
        let bare = LocalRegistry::parse("localhost:5001").unwrap();
        assert_eq!(bare.name(), "localhost:5001");
        assert_eq!(bare.under("m:5000"), "m:5000");
        for (bad, why) in [
            ("http://localhost:5001", "no scheme"),
            ("/local", "host is missing"),
            ("localhost:5001/Local", "lowercase"),
            ("localhost:5001/a//b", "lowercase"),
            ("user@localhost:5001", "HOST:PORT"),
        ] {
            let err = LocalRegistry::parse(bad).unwrap_err();
            assert!(
                err.contains(why) && err.contains("localhost:5001/local"),
                "{bad}: {err}"
            );
        }
    }
}
