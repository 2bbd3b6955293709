//! Digests of content served through non-public upstreams.
//!
//! Storage is content-addressed and shared by all upstreams, so without a
//! record a private blob, once cached, could be read anonymously by asking a
//! public upstream's path for its digest. Every digest served on a request
//! for a non-public upstream is recorded here (and appended to a file, so
//! the record survives restarts); an anonymous by-digest read of a recorded
//! digest through a public upstream is served only if that public upstream
//! itself has the content.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use crate::{Error, Result};

/// The set of private digests, optionally persisted one per line.
#[derive(Debug, Default)]
pub(crate) struct PrivateDigests {
    set: RwLock<HashSet<String>>,
    file: Option<(PathBuf, Mutex<()>)>,
}

impl PrivateDigests {
    /// A set kept in `path` (created when missing), or in memory only.
    pub(crate) fn open(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(PrivateDigests::default());
        };
        let set = match std::fs::read_to_string(path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => {
                return Err(Error::ClientAuth(format!(
                    "cannot read the private-digest record {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(PrivateDigests {
            set: RwLock::new(set),
            file: Some((path.to_owned(), Mutex::new(()))),
        })
    }

    /// Whether `digest` was served through a non-public upstream.
    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.set.read().map(|s| s.contains(digest)).unwrap_or(true)
    }

    /// Records `digest` (appending it to the file the first time).
    pub(crate) fn insert(&self, digest: &str) {
        let new = self
            .set
            .write()
            .map(|mut s| s.insert(digest.to_owned()))
            .unwrap_or(false);
        let (true, Some((path, lock))) = (new, &self.file) else {
            return;
        };
        let _guard = lock.lock();
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{digest}"));
        if let Err(e) = appended {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot persist a private digest; it is protected until restart only");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn recorded_digests_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private-digests");
        let set = PrivateDigests::open(Some(&path)).unwrap();
        assert!(!set.contains("sha256:a"));
        set.insert("sha256:a");
        set.insert("sha256:a");
        assert!(set.contains("sha256:a"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sha256:a\n");
        let reopened = PrivateDigests::open(Some(&path)).unwrap();
        assert!(reopened.contains("sha256:a"));
        assert!(!reopened.contains("sha256:b"));
    }
}
