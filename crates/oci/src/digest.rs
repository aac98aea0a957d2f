//! Content digests (`sha256:<64 hex>`), the names of everything in the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix, or characters outside the grammar.
    #[error("invalid digest format (expected sha256:<64 lowercase hex digits>)")]
    InvalidFormat,
    /// A known algorithm with the wrong number of hex digits.
    #[error("invalid digest length for {algorithm} (expected {expected} hex digits)")]
    InvalidLength {
        /// The algorithm named by the digest.
        algorithm: String,
        /// How many hex digits that algorithm needs.
        expected: usize,
    },
    /// A well-formed digest of an algorithm the store does not implement.
    #[error("unsupported digest algorithm {0:?} (only sha256 is supported)")]
    Unsupported(String),
}

/// A validated sha256 content digest, kept in its canonical text form.
///
/// Only sha256 is accepted: it is what every registry and `docker save`
/// produce, and the hex part becomes a file name in the store, so it must be
/// exactly 64 lowercase hex digits (no path can be smuggled through it).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::InvalidFormat)?;
        let algo_ok = !algorithm.is_empty()
            && algorithm.split(['+', '.', '_', '-']).all(|c| {
                c.starts_with(|ch: char| ch.is_ascii_alphabetic())
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric())
            });
        if !algo_ok || hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(DigestError::InvalidFormat);
        }
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            other => return Err(DigestError::Unsupported(other.to_string())),
        };
        if hex.len() != expected {
            return Err(DigestError::InvalidLength {
                algorithm: algorithm.to_string(),
                expected,
            });
        }
        // go-digest (and so Docker) accepts only lowercase hex.
        if hex.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(DigestError::InvalidFormat);
        }
        if algorithm != "sha256" {
            return Err(DigestError::Unsupported(algorithm.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The sha256 digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes a running hash into a digest.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex digits (the file name in `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full text, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as Docker shows image IDs.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(d.short(), "e3b0c44298fc");
        assert_eq!(Digest::parse("sha256"), Err(DigestError::InvalidFormat));
        assert_eq!(
            Digest::parse(&d.as_str().to_uppercase().replace("SHA", "sha")),
            Err(DigestError::InvalidFormat)
        );
        assert!(matches!(
            Digest::parse("sha256:abc"),
            Err(DigestError::InvalidLength { .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::Unsupported(_))
        ));
        assert!(matches!(
            Digest::parse("md5:abcd"),
            Err(DigestError::Unsupported(_))
        ));
        assert_eq!(
            Digest::parse("sha256:../../etc/passwd"),
            Err(DigestError::InvalidFormat)
        );
    }
}
