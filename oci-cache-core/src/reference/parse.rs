//! The reference grammar of `distribution/reference` (`regexp.go`), by hand.
//!
//! Each check walks the bytes once and returns the byte offset of the first
//! byte that breaks the grammar, so errors can point at it. The regular
//! expressions are deterministic enough to need no backtracking:
//!
//! - nothing before the digest may contain `@`, so the first `@` starts it;
//! - a tag holds neither `:` nor `/`, and a `:` inside the name (a port or an
//!   IPv6 host) is always followed by `/`; so a tag exists exactly when the last
//!   `:` before the digest has no `/` after it;
//! - a domain holds no `/`, so it can only be the first `/`-separated component.

use super::ParseErrorKind;

/// A grammar violation: what kind, and the byte offset in the checked text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fail {
    pub(super) kind: ParseErrorKind,
    pub(super) offset: usize,
}

impl Fail {
    pub(super) fn new(kind: ParseErrorKind, offset: usize) -> Self {
        Fail { kind, offset }
    }

    /// The same failure, `by` bytes further right (for checks run on a suffix).
    pub(super) fn shifted(self, by: usize) -> Self {
        Fail {
            offset: self.offset + by,
            ..self
        }
    }
}

/// Repository paths may be at most this long (`RepositoryNameTotalLengthMax`).
pub(super) const PATH_MAX: usize = 255;

/// Tags may be at most this long (`[\w][\w.-]{0,127}`).
const TAG_MAX: usize = 128;

fn is_path_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `remote-name`: `path-component ("/" path-component)*` where a component is
/// `[a-z0-9]+ (separator [a-z0-9]+)*` and a separator is `.`, `_`, `__` or `-+`.
/// Does not check the length.
pub(super) fn check_path(s: &str) -> Result<(), usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        let run = i;
        while bytes.get(i).copied().is_some_and(is_path_alnum) {
            i += 1;
        }
        if i == run {
            return Err(i);
        }
        match bytes.get(i) {
            None => return Ok(()),
            Some(b'/' | b'.') => i += 1,
            Some(b'_') => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            Some(b'-') => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return Err(i),
        }
    }
}

/// `domain := host [":" port]`, `host := domain-name | "[" [a-fA-F0-9:]+ "]"`,
/// `domain-name := component ("." component)*`, a component being alphanumerics
/// with inner `-`. Uppercase is allowed; the port is `[0-9]+` without range check.
pub(super) fn check_domain(s: &str) -> Result<(), usize> {
    let bytes = s.as_bytes();
    let host_end = if bytes.first() == Some(&b'[') {
        let mut i = 1;
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_hexdigit() || *b == b':')
        {
            i += 1;
        }
        if i == 1 || bytes.get(i) != Some(&b']') {
            return Err(i);
        }
        i + 1
    } else {
        let mut i = 0;
        loop {
            let start = i;
            while bytes
                .get(i)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                i += 1;
            }
            if i == start || bytes.get(start) == Some(&b'-') {
                return Err(start);
            }
            if bytes.get(i - 1) == Some(&b'-') {
                return Err(i - 1);
            }
            if bytes.get(i) == Some(&b'.') {
                i += 1;
            } else {
                break i;
            }
        }
    };
    match bytes.get(host_end) {
        None => Ok(()),
        Some(b':') => {
            let port = bytes.get(host_end + 1..).unwrap_or_default();
            match port.iter().position(|b| !b.is_ascii_digit()) {
                Some(bad) => Err(host_end + 1 + bad),
                None if port.is_empty() => Err(host_end + 1),
                None => Ok(()),
            }
        }
        Some(_) => Err(host_end),
    }
}

/// `tag := [\w][\w.-]{0,127}`.
pub(super) fn check_tag(s: &str) -> Result<(), usize> {
    let bytes = s.as_bytes();
    if !bytes.first().copied().is_some_and(is_word) {
        return Err(0);
    }
    if let Some(bad) = bytes
        .iter()
        .position(|&b| !(is_word(b) || b == b'.' || b == b'-'))
    {
        return Err(bad);
    }
    if bytes.len() > TAG_MAX {
        return Err(TAG_MAX);
    }
    Ok(())
}

/// The reference grammar's digest pattern, looser than what [`Digest`] accepts:
/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)* ":" [0-9a-fA-F]{32,}`.
///
/// [`Digest`]: crate::digest::Digest
fn check_digest_pattern(s: &str) -> Result<(), usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        if !bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
            return Err(i);
        }
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'-' | b'_' | b'+' | b'.') => i += 1,
            Some(b':') => break,
            _ => return Err(i),
        }
    }
    let hex = bytes.get(i + 1..).unwrap_or_default();
    if let Some(bad) = hex.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(i + 1 + bad);
    }
    if hex.len() < 32 {
        return Err(i + 1 + hex.len());
    }
    Ok(())
}

/// A reference cut into name, tag and digest, each with its byte offset.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parts<'a> {
    pub(super) name: &'a str,
    pub(super) tag: Option<&'a str>,
    pub(super) tag_at: usize,
    pub(super) digest: Option<&'a str>,
    pub(super) digest_at: usize,
}

/// Cuts `name[:tag][@digest]` (see the module docs for why this is unambiguous).
pub(super) fn split(s: &str) -> Parts<'_> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (s, None),
    };
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (name_tag, None),
    };
    Parts {
        name,
        tag,
        tag_at: name.len() + 1,
        digest,
        digest_at: name_tag.len() + 1,
    }
}

/// Checks the tag and the digest pattern of `parts` (the name is checked by the caller).
pub(super) fn check_tail(parts: &Parts<'_>) -> Result<(), Fail> {
    if let Some(tag) = parts.tag {
        check_tag(tag).map_err(|at| Fail::new(ParseErrorKind::InvalidTag, parts.tag_at + at))?;
    }
    if let Some(digest) = parts.digest {
        check_digest_pattern(digest)
            .map_err(|at| Fail::new(ParseErrorKind::InvalidDigest, parts.digest_at + at))?;
    }
    Ok(())
}

/// The name of a reference, `[domain "/"] remote-name`, as `Parse` captures it:
/// the domain is taken whenever the first component is one and the rest is a
/// path; otherwise the whole name must be a path, with no domain.
/// Returns the domain (if any) and the path with its offset.
pub(super) fn match_name(name: &str) -> Result<(Option<&str>, &str, usize), Fail> {
    let Some((first, rest)) = name.split_once('/') else {
        return match check_path(name) {
            Ok(()) => Ok((None, name, 0)),
            Err(at) => Err(Fail::new(ParseErrorKind::InvalidFormat, at)),
        };
    };
    let path_at = first.len() + 1;
    let domain = check_domain(first);
    let after_domain = match domain {
        Ok(()) => match check_path(rest) {
            Ok(()) => return Ok((Some(first), rest, path_at)),
            Err(at) => Some(path_at + at),
        },
        Err(_) => None,
    };
    let whole = match check_path(name) {
        Ok(()) => return Ok((None, name, 0)),
        Err(at) => at,
    };
    // Both readings fail: blame the one that got further, it is what the user meant.
    let path_fail = Fail::new(
        ParseErrorKind::InvalidFormat,
        after_domain.map_or(whole, |at| at.max(whole)),
    );
    match domain {
        Err(at) if at > path_fail.offset => Err(Fail::new(ParseErrorKind::InvalidDomain, at)),
        _ => Err(path_fail),
    }
}

/// Go's `strings.ToLower(s) != s`: does any character change when lowercased?
pub(super) fn has_upper(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        s.chars().any(changes_when_lowercased)
    }
}

/// Byte offset of the first character that lowercasing changes, at or after `from`
/// when there is one there, else the first anywhere.
pub(super) fn first_upper(s: &str, from: usize) -> usize {
    let mut first = None;
    for (at, c) in s.char_indices() {
        if changes_when_lowercased(c) {
            if at >= from {
                return at;
            }
            first.get_or_insert(at);
        }
    }
    first.unwrap_or(0)
}

fn changes_when_lowercased(c: char) -> bool {
    c.to_lowercase().next() != Some(c)
}

/// Go's `strings.ToLower`: the simple (one character to one character) mapping.
/// The first character of Rust's full mapping is the simple one; only `İ`
/// maps to more than one character, and Go maps it to `i` too.
pub(super) fn go_lowercase(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// `[a-f0-9]{64}`: an image ID, which `ParseNormalizedNamed` refuses as a name.
pub(super) fn is_identifier(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_grammar() {
        for ok in ["a", "a/b", "a.b", "a_b", "a__b", "a---b", "a-b.c_d__e/f0"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", 0),
            ("a/", 2),
            ("/a", 0),
            ("a//b", 2),
            ("a..b", 2),
            ("a___b", 3),
            ("a_.b", 2),
            ("-a", 0),
            ("a-", 2),
            ("aB", 1),
            ("a:b", 1),
        ];
        for (input, at) in bad {
            assert_eq!(check_path(input), Err(at), "{input}");
        }
    }

    #[test]
    fn domain_grammar() {
        for ok in [
            "a",
            "Example.COM",
            "xn--n3h.com:18080",
            "127.0.0.1:5000",
            "[::1]",
            "[fc00:1:2:3:4:5:6:7]:5000",
            "localhost",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", 0),
            ("-a", 0),
            ("a-", 1),
            ("a..b", 2),
            ("a:", 2),
            ("a:5x", 3),
            ("[]", 1),
            ("[fe80::1%eth0]", 8),
            ("[::1]x", 5),
            ("a_b", 1),
        ];
        for (input, at) in bad {
            assert_eq!(check_domain(input), Err(at), "{input}");
        }
    }

    #[test]
    fn tag_grammar() {
        assert_eq!(check_tag("Latest_1.0-rc"), Ok(()));
        assert_eq!(check_tag(&"a".repeat(128)), Ok(()));
        assert_eq!(check_tag(&"a".repeat(129)), Err(128));
        assert_eq!(check_tag(".a"), Err(0));
        assert_eq!(check_tag("a+b"), Err(1));
        assert_eq!(check_tag(""), Err(0));
    }

    #[test]
    fn split_finds_tag_only_after_last_slash() {
        let parts = split("host:5000/repo:tag@sha256:abc");
        assert_eq!(parts.name, "host:5000/repo");
        assert_eq!(parts.tag, Some("tag"));
        assert_eq!(parts.tag_at, 15);
        assert_eq!(parts.digest, Some("sha256:abc"));
        assert_eq!(parts.digest_at, 19);
        let parts = split("host:5000/repo");
        assert_eq!((parts.name, parts.tag), ("host:5000/repo", None));
    }
}
