//! The crate's error type: each variant says what happened and, where the
//! user can do something about it, what to do.
//!
//! Every field that can carry text from an image or a registry (tags,
//! platforms, media types, digests that failed to parse, parser and server
//! messages) is shown through [`Escaped`], so an image cannot put terminal
//! control sequences on the user's screen through an error message.

use std::path::PathBuf;

use supermachine_rootfs::Escaped;

use crate::digest::{Digest, DigestError};
use crate::reference::ReferenceError;

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong getting an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A registry reference that Docker would reject too.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// What the user typed.
        input: String,
        /// Which rule it broke.
        reason: ReferenceError,
    },
    /// A source string that is neither a reference nor `oci:`/`docker-archive:`.
    #[error("invalid image source {input:?}: {reason}")]
    InvalidSource {
        /// What the user typed.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A digest string (in a manifest, index or argument) is malformed.
    #[error("invalid digest '{}' in {}: {reason}", Escaped::new(.input), Escaped::new(.context))]
    InvalidDigest {
        /// The offending text.
        input: String,
        /// Where it was found.
        context: String,
        /// Which rule it broke.
        reason: DigestError,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The registry wants credentials we do not have, or rejected ours.
    #[error("registry {registry} answered 401 Unauthorized for {repository}: {hint}")]
    Unauthorized {
        /// The host we talked to (a mirror, if one was used).
        registry: String,
        /// The repository asked for.
        repository: String,
        /// What to do about it.
        hint: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("{registry} has no manifest {tag_or_digest} in repository {repository} (check the name and tag)")]
    ManifestNotFound {
        /// The host we talked to.
        registry: String,
        /// The repository asked for.
        repository: String,
        /// The tag or digest asked for.
        tag_or_digest: String,
    },
    /// Any other failure talking to a registry (connection refused, TLS, 5xx ...).
    #[error("registry {registry} ({url}): {}", Escaped::new(.message))]
    Registry {
        /// The host we talked to.
        registry: String,
        /// The base URL used (shows http vs https).
        url: String,
        /// What the client library said.
        message: String,
    },
    /// Every endpoint for a reference failed: its mirrors, then the registry itself.
    #[error("pulling {reference} failed on every endpoint:{}", format_attempts(.attempts))]
    AllEndpointsFailed {
        /// The reference being pulled.
        reference: String,
        /// `(endpoint, error)` per endpoint tried, mirrors first.
        attempts: Vec<(String, Error)>,
    },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {}: expected {expected}, got {actual} (the source is corrupt or was tampered with; nothing was stored)", Escaped::new(.what))]
    DigestMismatch {
        /// Which blob (and from where).
        what: String,
        /// The digest we were promised.
        expected: Digest,
        /// The digest of what we received.
        actual: Digest,
    },
    /// Content did not have the size its descriptor promised.
    #[error("size mismatch for {}: expected {expected} bytes, got {actual}{} (nothing was stored)", Escaped::new(.what), if *.truncated { " before the stream ended" } else { "" })]
    SizeMismatch {
        /// Which blob (and from where).
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (or a lower bound if `truncated` is false and it was too long).
        actual: u64,
        /// True when the stream ended early.
        truncated: bool,
    },
    /// A manifest, index or config is larger than we are willing to parse.
    #[error("{} is {size} bytes, more than the {limit}-byte limit for JSON documents", Escaped::new(.what))]
    TooLarge {
        /// Which document.
        what: String,
        /// Its (declared or actual) size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or config that is not valid for a container image.
    #[error("invalid {}: {}", Escaped::new(.what), Escaped::new(.reason))]
    InvalidManifest {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A media type we cannot run (an artifact, a Windows layer, schema 1 ...).
    #[error("{} has media type '{}', which is not a Linux container image part we can use", Escaped::new(.what), Escaped::new(.media_type))]
    UnsupportedMediaType {
        /// Which document or layer.
        what: String,
        /// The media type found.
        media_type: String,
    },
    /// An index without an entry for the platform we run.
    #[error("{} has no image for {}; it has: {}", Escaped::new(.reference), Escaped::new(.wanted), if .available.is_empty() { "no platform entries".to_string() } else { Escaped::new(&.available.join(", ")).to_string() })]
    NoMatchingPlatform {
        /// The image.
        reference: String,
        /// `linux/amd64`.
        wanted: String,
        /// Platforms present in the index.
        available: Vec<String>,
    },
    /// An OCI image layout directory that cannot be used.
    #[error("OCI layout {path}: {}", Escaped::new(.reason))]
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong or missing.
        reason: String,
    },
    /// A `docker save` archive that cannot be used.
    #[error("docker archive {path}: {}", Escaped::new(.reason))]
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// What is wrong or missing.
        reason: String,
    },
    /// `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`) cannot be used.
    #[error("docker credentials file {path}: {reason}")]
    Credentials {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Our registries config (mirrors, insecure registries) cannot be used.
    #[error("registries config {origin}: {reason}")]
    RegistriesConfig {
        /// The file or environment variable.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// `remove_image` was asked for something the store has no record of.
    #[error("no image {0} in the store (see the image list)")]
    ImageNotFound(String),
    /// A store record that cannot be read (corrupt or from a newer version).
    #[error("image record {path}: {} (remove it and pull again)", Escaped::new(.reason))]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn format_attempts(attempts: &[(String, Error)]) -> String {
    attempts
        .iter()
        .map(|(endpoint, e)| format!("\n  {endpoint}: {e}"))
        .collect()
}

impl Error {
    /// An [`Error::Io`] with a context like `"creating /x/y"`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `.ctx("reading x")` on io results.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
