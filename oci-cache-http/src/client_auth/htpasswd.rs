//! The htpasswd file registry:2 reads: `user:hash` lines with bcrypt hashes
//! (`htpasswd -B`), reloaded when the file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::{Error, Result};

/// How often the file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The bcrypt cost of the dummy hash when the file has no entries.
const DEFAULT_DUMMY_COST: u32 = 10;

/// A bcrypt hash of cost `cost` that unknown users are checked against, so
/// that they take as long as known ones (no user enumeration by timing):
/// the cost must be the file's, as each step doubles the time. One hash per
/// cost, made on first use.
fn dummy_hash(cost: u32) -> String {
    static DUMMIES: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());
    let mut dummies = DUMMIES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, hash)) = dummies.iter().find(|(c, _)| *c == cost) {
        return hash.clone();
    }
    let hash = bcrypt::hash("oci-cache unknown user", cost).unwrap_or_default();
    dummies.push((cost, hash.clone()));
    hash
}

/// The cost field of a bcrypt hash (`$2y$10$…` → 10).
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// Parsed entries: user → bcrypt hash.
#[derive(Default, Clone, PartialEq, Eq)]
pub(crate) struct Htpasswd {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Parses an htpasswd file. Blank lines and `#` comments are skipped;
    /// entries whose hash is not bcrypt (`$2a$`, `$2b$`, `$2y$`) are refused
    /// with the line number, as registry:2 cannot read them either.
    pub(crate) fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:hash", number + 1));
            };
            if user.is_empty() {
                return Err(format!("line {}: empty user name", number + 1));
            }
            check_bcrypt(hash).map_err(|e| format!("line {} ({user}): {e}", number + 1))?;
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users })
    }

    /// Whether `password` is `user`'s. Unknown users cost one bcrypt check too.
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            // bcrypt compares the hashes in constant time.
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy_hash());
                false
            }
        }
    }

    /// Number of users.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    /// The highest bcrypt cost of any entry (0 without entries).
    pub(crate) fn max_cost(&self) -> u32 {
        self.users
            .values()
            .filter_map(|hash| cost_of(hash))
            .max()
            .unwrap_or(0)
    }

    /// The hash an unknown user's password is checked against: of the
    /// file's highest cost, so that no user name answers faster than a
    /// real one.
    fn dummy_hash(&self) -> String {
        match self.max_cost() {
            0 => dummy_hash(DEFAULT_DUMMY_COST),
            cost => dummy_hash(cost),
        }
    }
}

/// The highest bcrypt cost accepted. Every authenticated request runs one
/// check, and each step doubles it: cost 14 is about a second of CPU, so a
/// higher one would turn each request (and each wrong guess) into seconds of
/// work.
pub(crate) const MAX_BCRYPT_COST: u32 = 14;

/// Checks a hash's shape at load time (`$2a$`, `$2b$` or `$2y$`, a two-digit
/// cost, 53 characters of bcrypt's base64), so a broken line is reported with
/// its number when the file is read instead of failing every login later.
fn check_bcrypt(hash: &str) -> std::result::Result<(), String> {
    const SHAPE: &str = "expected a bcrypt hash like $2y$10$ followed by 53 characters; create entries with `htpasswd -B`";
    let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|prefix| hash.strip_prefix(prefix))
    else {
        return Err(format!("only bcrypt hashes are supported; {SHAPE}"));
    };
    let (cost, salt_and_hash) = rest.split_once('$').ok_or(SHAPE)?;
    let cost: u32 = match cost.as_bytes() {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            u32::from(a - b'0') * 10 + u32::from(b - b'0')
        }
        _ => return Err(SHAPE.to_owned()),
    };
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside 4..={MAX_BCRYPT_COST} (every request checks the \
             password, so a high cost makes each one slow); recreate the entry with \
             `htpasswd -B -C 10`"
        ));
    }
    let base64 = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'/';
    if salt_and_hash.len() != 53 || !salt_and_hash.bytes().all(base64) {
        return Err(SHAPE.to_owned());
    }
    Ok(())
}

/// An htpasswd file, re-read when its modification time or size changes.
#[derive(Debug)]
pub(crate) struct HtpasswdFile {
    path: PathBuf,
    state: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// Shared, so a check holds no lock during bcrypt and copies no map.
    entries: Arc<Htpasswd>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl HtpasswdFile {
    /// Loads `path`; an unreadable or invalid file is an error at start-up.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let (entries, stamp) = read(path)?;
        tracing::info!(path = %path.display(), users = entries.len(), "loaded the htpasswd file");
        Ok(HtpasswdFile {
            path: path.to_owned(),
            state: RwLock::new(Loaded {
                entries: Arc::new(entries),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// Verifies `user:password` against the current file, reloading it first
    /// when it changed. A broken new version keeps the old one (logged).
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        self.reload_if_changed();
        let entries = match self.state.read() {
            Ok(state) => Arc::clone(&state.entries),
            Err(_) => return false,
        };
        entries.verify(user, password)
    }

    fn reload_if_changed(&self) {
        let due = self
            .state
            .read()
            .map(|s| s.checked.elapsed() >= RELOAD_CHECK)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut state) = self.state.write() else {
            return;
        };
        state.checked = Instant::now();
        if stamp_of(&self.path) == state.stamp {
            return;
        }
        match read(&self.path) {
            Ok((entries, stamp)) => {
                tracing::info!(path = %self.path.display(), users = entries.len(), "reloaded the htpasswd file");
                state.entries = Arc::new(entries);
                state.stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "htpasswd file changed but cannot be used; keeping the previous version");
            }
        }
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path) -> Result<(Htpasswd, Option<(SystemTime, u64)>)> {
    let stamp = stamp_of(path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::ClientAuth(oci_cache_core::unreadable::unreadable(
            "htpasswd file",
            path,
            &e,
        ))
    })?;
    let entries = Htpasswd::parse(&text)
        .map_err(|e| Error::ClientAuth(format!("htpasswd file {}: {e}", path.display())))?;
    Ok((entries, stamp))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bcrypt_entries_verify_and_others_are_refused() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\n\nalice:{hash}\n")).unwrap();
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "S3cret"));
        assert!(!file.verify("bob", "s3cret"));
        assert!(!file.verify("", ""));
        assert!(!format!("{file:?}").contains(&hash));
        for bad in [
            "alice",
            ":$2y$x",
            "alice:{SHA}abc",
            "alice:$apr1$x$y",
            "alice:plain",
            "alice:$2y$",
            "alice:$2y$10",
            "alice:$2y$1x$abc",
            // Too short, a character outside bcrypt's alphabet, cost 3 and 15.
            "alice:$2y$10$abc",
            &format!("alice:{}!", &hash[..hash.len() - 1]),
            &format!("alice:{}", hash.replacen("$04$", "$03$", 1)),
            &format!("alice:{}", hash.replacen("$04$", "$15$", 1)),
        ] {
            assert!(Htpasswd::parse(bad).is_err(), "{bad}");
        }
        assert!(
            bcrypt::verify("x", &file.dummy_hash()).is_ok(),
            "the dummy hash must parse"
        );
    }

    /// An unknown user is checked against a hash of the file's cost: a
    /// cheaper dummy answered unknown names faster than known ones.
    #[test]
    fn unknown_users_cost_a_check_at_the_files_cost() {
        for cost in [4, 6] {
            let hash = bcrypt::hash("pw", cost).unwrap();
            let file = Htpasswd::parse(&format!("alice:{hash}\n")).unwrap();
            let dummy = file.dummy_hash();
            assert_eq!(cost_of(&dummy), Some(cost), "{dummy}");
            check_bcrypt(&dummy).unwrap();
            assert!(!file.verify("mallory", "pw"));
        }
        assert_eq!(
            cost_of(&Htpasswd::default().dummy_hash()),
            Some(DEFAULT_DUMMY_COST)
        );
    }

    #[test]
    fn the_file_is_reloaded_when_it_changes_and_a_broken_version_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("a:{}\n", bcrypt::hash("one", 4).unwrap())).unwrap();
        let file = HtpasswdFile::open(&path).unwrap();
        assert!(file.verify("a", "one"));
        std::fs::write(
            &path,
            format!(
                "a:{}\nb:{}\n",
                bcrypt::hash("two", 4).unwrap(),
                bcrypt::hash("b", 4).unwrap()
            ),
        )
        .unwrap();
        file.state.write().unwrap().checked -= RELOAD_CHECK;
        assert!(file.verify("a", "two"));
        assert!(!file.verify("a", "one"));
        std::fs::write(&path, "garbage").unwrap();
        file.state.write().unwrap().checked -= RELOAD_CHECK;
        assert!(file.verify("b", "b"), "a broken file replaced the good one");
        assert!(HtpasswdFile::open(&dir.path().join("missing")).is_err());
    }
}
