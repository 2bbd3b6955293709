//! Content digests (`sha256:…`, `sha512:…`) and a streaming verifier.
//!
//! A [`Digest`] is only constructed from a validated string: a registered
//! algorithm and lowercase hex of exactly the right length. Storage paths are
//! derived from it, so a `Digest` can never smuggle `/` or `..` into a path.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A hash algorithm the OCI image spec registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// SHA-256, 64 hex characters; what every registry uses.
    Sha256,
    /// SHA-512, 128 hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as it appears before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex characters in an encoded digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestErrorKind {
    /// There is no `:` between algorithm and hex.
    MissingSeparator,
    /// The algorithm is well-formed but not sha256 or sha512.
    UnsupportedAlgorithm,
    /// The algorithm part breaks the OCI algorithm grammar.
    InvalidAlgorithm,
    /// The hex part has the wrong number of characters for its algorithm.
    InvalidLength,
    /// The hex part holds something other than lowercase hex digits.
    InvalidHex,
}

/// A digest string that could not be parsed; names the input and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} in digest {input:?} at offset {offset}")]
pub struct DigestError {
    kind: DigestErrorKind,
    input: String,
    offset: usize,
    message: &'static str,
}

impl DigestError {
    fn new(kind: DigestErrorKind, input: &str, offset: usize) -> Self {
        let message = match kind {
            DigestErrorKind::MissingSeparator => "missing ':' between algorithm and hex",
            DigestErrorKind::UnsupportedAlgorithm => {
                "unsupported digest algorithm (use sha256 or sha512)"
            }
            DigestErrorKind::InvalidAlgorithm => "invalid digest algorithm",
            DigestErrorKind::InvalidLength => "wrong number of hex characters for the algorithm",
            DigestErrorKind::InvalidHex => "digest hex must be lowercase 0-9a-f",
        };
        DigestError {
            kind,
            input: input.to_owned(),
            offset,
            message,
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> DigestErrorKind {
        self.kind
    }

    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Byte offset in [`input`](Self::input) where the problem starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// A validated content digest such as `sha256:e3b0c442…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    /// The full `algo:hex` text; kept whole so `as_str` costs nothing.
    text: Box<str>,
}

impl Digest {
    /// The hash algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part after the `:`.
    pub fn hex(&self) -> &str {
        self.text
            .get(self.algorithm.as_str().len() + 1..)
            .unwrap_or_default()
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Self::from_hash(DigestAlgorithm::Sha256, &Sha256::digest(bytes))
    }

    /// The digest of `bytes` computed with `algorithm`.
    pub fn compute(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
        let mut hasher = DigestHasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    fn from_hash(algorithm: DigestAlgorithm, hash: &[u8]) -> Digest {
        let mut text = String::with_capacity(algorithm.as_str().len() + 1 + hash.len() * 2);
        text.push_str(algorithm.as_str());
        text.push(':');
        text.push_str(&hex::encode(hash));
        Digest {
            algorithm,
            text: text.into_boxed_str(),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let colon = input
            .find(':')
            .ok_or_else(|| DigestError::new(DigestErrorKind::MissingSeparator, input, 0))?;
        let (name, rest) = input.split_at(colon);
        let encoded = rest.get(1..).unwrap_or_default();
        let algorithm = match DigestAlgorithm::from_name(name) {
            Some(algorithm) => algorithm,
            None if is_valid_algorithm_grammar(name) => {
                return Err(DigestError::new(
                    DigestErrorKind::UnsupportedAlgorithm,
                    input,
                    0,
                ))
            }
            None => {
                return Err(DigestError::new(
                    DigestErrorKind::InvalidAlgorithm,
                    input,
                    0,
                ))
            }
        };
        if let Some(bad) = encoded
            .bytes()
            .position(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::new(
                DigestErrorKind::InvalidHex,
                input,
                colon + 1 + bad,
            ));
        }
        if encoded.len() != algorithm.hex_len() {
            return Err(DigestError::new(
                DigestErrorKind::InvalidLength,
                input,
                colon + 1,
            ));
        }
        Ok(Digest {
            algorithm,
            text: input.into(),
        })
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*`, the OCI algorithm grammar.
fn is_valid_algorithm_grammar(name: &str) -> bool {
    !name.is_empty()
        && name.split(['+', '.', '_', '-']).all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one [`DigestAlgorithm`].
#[derive(Debug, Clone)]
pub struct DigestHasher {
    state: HasherState,
}

#[derive(Debug, Clone)]
enum HasherState {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        let state = match algorithm {
            DigestAlgorithm::Sha256 => HasherState::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => HasherState::Sha512(Sha512::new()),
        };
        DigestHasher { state }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            HasherState::Sha256(h) => h.update(bytes),
            HasherState::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self.state {
            HasherState::Sha256(h) => Digest::from_hash(DigestAlgorithm::Sha256, &h.finalize()),
            HasherState::Sha512(h) => Digest::from_hash(DigestAlgorithm::Sha512, &h.finalize()),
        }
    }
}

/// Checks bytes against an expected digest (and size, when known) as they stream past.
///
/// Feed every chunk to [`update`](Self::update); [`finish`](Self::finish) says whether
/// the whole stream matched. [`update`](Self::update) fails early once more bytes than
/// the expected size have arrived, so a lying upstream cannot fill the disk.
///
/// ```
/// use oci_cache_core::digest::{Digest, DigestVerifier};
///
/// let expected = Digest::sha256_of(b"hello world");
/// let mut verifier = DigestVerifier::new(expected, Some(11));
/// verifier.update(b"hello ").unwrap();
/// verifier.update(b"world").unwrap();
/// assert_eq!(verifier.finish().unwrap(), 11);
/// ```
#[derive(Debug, Clone)]
pub struct DigestVerifier {
    size: SizeCheck,
    hasher: DigestHasher,
}

impl DigestVerifier {
    /// A verifier for content that must hash to `expected` and, if given, be `expected_size` bytes.
    pub fn new(expected: Digest, expected_size: Option<u64>) -> Self {
        DigestVerifier {
            hasher: DigestHasher::new(expected.algorithm()),
            size: SizeCheck::new(expected, expected_size),
        }
    }

    /// The digest the content must match.
    pub fn expected(&self) -> &Digest {
        &self.size.digest
    }

    /// Bytes seen so far.
    pub fn bytes_seen(&self) -> u64 {
        self.size.seen
    }

    /// Hashes one more chunk; errors as soon as the content is longer than expected.
    pub fn update(&mut self, chunk: &[u8]) -> crate::Result<()> {
        self.size.add(chunk.len())?;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Ends the stream: the total size when size and digest match, else the mismatch.
    pub fn finish(self) -> crate::Result<u64> {
        let seen = self.size.finish()?;
        let actual = self.hasher.finish();
        if actual != self.size.digest {
            return Err(crate::Error::DigestMismatch {
                expected: self.size.digest,
                actual,
            });
        }
        Ok(seen)
    }
}

/// The size half of [`DigestVerifier`], on its own for bytes whose digest
/// someone else checks (a preverified storage write).
#[derive(Debug, Clone)]
pub(crate) struct SizeCheck {
    digest: Digest,
    expected: Option<u64>,
    seen: u64,
}

impl SizeCheck {
    pub(crate) fn new(digest: Digest, expected: Option<u64>) -> Self {
        SizeCheck {
            digest,
            expected,
            seen: 0,
        }
    }

    /// Counts `len` more bytes; errors as soon as there are more than expected.
    pub(crate) fn add(&mut self, len: usize) -> crate::Result<()> {
        self.seen += len as u64;
        match self.expected {
            Some(expected) if self.seen > expected => Err(self.mismatch(expected)),
            _ => Ok(()),
        }
    }

    /// The total, when it is exactly the expected size (or none was given).
    pub(crate) fn finish(&self) -> crate::Result<u64> {
        match self.expected {
            Some(expected) if self.seen != expected => Err(self.mismatch(expected)),
            _ => Ok(self.seen),
        }
    }

    fn mismatch(&self, expected: u64) -> crate::Error {
        crate::Error::SizeMismatch {
            digest: self.digest.clone(),
            expected,
            actual: self.seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let digest: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(digest.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(digest.to_string(), EMPTY_SHA256);
        assert_eq!(digest, Digest::sha256_of(b""));
    }

    #[test]
    fn sha512_round_trip() {
        let digest = Digest::compute(DigestAlgorithm::Sha512, b"abc");
        assert_eq!(digest.hex().len(), 128);
        assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
    }

    #[test]
    fn rejects_bad_digests_with_kind_and_offset() {
        let cases = [
            ("sha256", DigestErrorKind::MissingSeparator, 0),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                DigestErrorKind::UnsupportedAlgorithm,
                0,
            ),
            ("SHA256:abc", DigestErrorKind::InvalidAlgorithm, 0),
            ("sha256:abc", DigestErrorKind::InvalidLength, 7),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestErrorKind::InvalidHex,
                7,
            ),
            ("sha256:../../etc/passwd", DigestErrorKind::InvalidHex, 7),
        ];
        for (input, kind, offset) in cases {
            let err = input.parse::<Digest>().unwrap_err();
            assert_eq!((err.kind(), err.offset()), (kind, offset), "{input}");
            assert!(err.to_string().contains(input), "{err}");
        }
    }

    #[test]
    fn verifier_reports_mismatch_and_overrun() {
        let expected = Digest::sha256_of(b"abc");
        let mut ok = DigestVerifier::new(expected.clone(), None);
        ok.update(b"ab").unwrap();
        ok.update(b"c").unwrap();
        assert_eq!(ok.finish().unwrap(), 3);

        let mut wrong = DigestVerifier::new(expected.clone(), None);
        wrong.update(b"abd").unwrap();
        assert!(matches!(
            wrong.finish(),
            Err(crate::Error::DigestMismatch { .. })
        ));

        let mut long = DigestVerifier::new(expected.clone(), Some(3));
        assert!(matches!(
            long.update(b"abcd"),
            Err(crate::Error::SizeMismatch { actual: 4, .. })
        ));

        let mut short = DigestVerifier::new(expected, Some(3));
        short.update(b"ab").unwrap();
        assert!(matches!(
            short.finish(),
            Err(crate::Error::SizeMismatch { actual: 2, .. })
        ));
    }

    #[test]
    fn serde_goes_through_from_str() {
        let json = format!("\"{EMPTY_SHA256}\"");
        let digest: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&digest).unwrap(), json);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
