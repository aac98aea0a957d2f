//! Image references, parsed and normalized by Docker's rules.
//!
//! Why not `oci_client::Reference` (= `oci_spec::distribution::Reference`)?
//! It is close to Docker but differs where users notice: an uppercase
//! repository gives "invalid reference format" instead of "must be
//! lowercase", the 255-character limit is applied to the repository instead of
//! the whole normalized name, `[::1]:5000/x` is rejected, uppercase hex
//! digests and 64-hex "image IDs" are accepted as names. It also merges the
//! registry we *name* with the one we *talk to*; our mirrors keep those apart.
//! So this is a small hand parser for the grammar of
//! `github.com/distribution/reference` (`ParseNormalizedNamed`), tested
//! against its cases in `tests/reference.rs`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry host that short names (`alpine`, `user/app`) live on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// Why a reference string was rejected; the messages follow Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The empty string.
    #[error("repository name must have at least one component")]
    Empty,
    /// Anything that does not fit the reference grammar.
    #[error("invalid reference format")]
    InvalidFormat,
    /// The repository path has uppercase letters.
    #[error("invalid reference format: repository name must be lowercase")]
    NameContainsUppercase,
    /// `registry/repository` is longer than 255 characters.
    #[error("repository name must not be more than 255 characters (it has {0})")]
    NameTooLong(usize),
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag format (1 to 128 characters of letters, digits, '_', '.', '-', not starting with '.' or '-')")]
    InvalidTag,
    /// The registry part is not a host name, IPv4 or `[IPv6]` address with an optional port.
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    /// The digest after `@` is malformed.
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
    /// A bare 64-hex string, which Docker reserves for image IDs.
    #[error("invalid repository name, cannot specify 64-byte hexadecimal strings")]
    HexIdentifier,
}

/// A normalized image reference: `registry/repository[:tag][@digest]`.
///
/// `alpine` becomes `docker.io/library/alpine:latest`; a reference with a
/// digest and no tag has no tag. When both are given the digest decides what
/// is pulled (as in Docker) and the tag is kept for display.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::HexIdentifier);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (input, None),
        };
        // A tag follows the last ':' that is after the last '/'; a ':' before
        // a '/' can only be a registry port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if rest[i..].find('/').is_none() => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::InvalidFormat);
        }
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let (registry, repository) = split_registry(name);
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::NameContainsUppercase);
        }
        validate_registry(&registry)?;
        validate_repository(&repository)?;
        let total = registry.len() + 1 + repository.len();
        if total > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong(total));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host as named, e.g. `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same reference pinned to `digest` (tag dropped), as pulled.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The short form Docker prints: `alpine:latest`, `user/app:v1`,
    /// `localhost:5000/app:v1`.
    pub fn familiar(&self) -> String {
        let mut name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            name.push(':');
            name.push_str(t);
        }
        if let Some(d) = &self.digest {
            name.push('@');
            name.push_str(d.as_str());
        }
        name
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn parse_digest(s: &str) -> Result<Digest, ReferenceError> {
    // The digest grammar is checked before the algorithm is looked up, so a
    // stray second '@' or a bad character is a format error, not "unsupported".
    if s.contains('@') {
        return Err(ReferenceError::InvalidFormat);
    }
    Ok(Digest::parse(s)?)
}

/// Docker's `splitDockerDomain`: the first component is a registry only if
/// it looks like a host (has '.' or ':', is `localhost`, or has uppercase).
fn split_registry(name: &str) -> (String, String) {
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB.to_string();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("{OFFICIAL_NAMESPACE}/{repository}");
    }
    (registry, repository)
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= TAG_LENGTH_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag)
    }
}

/// `host[:port]` where host is a DNS name / IPv4 address or `[IPv6]`.
fn validate_registry(registry: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidRegistry(registry.to_string());
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(bad)?;
        let ip = &rest[..end];
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => return Err(bad()),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        };
        if !host.split('.').all(component_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Path components: `[a-z0-9]+` runs joined by `.`, `_`, `__` or `-+`.
fn validate_repository(repository: &str) -> Result<(), ReferenceError> {
    for component in repository.split('/') {
        let b = component.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(ReferenceError::InvalidFormat);
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
            if !ok {
                return Err(ReferenceError::InvalidFormat);
            }
        }
    }
    Ok(())
}
