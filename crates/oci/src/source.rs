//! Where an image comes from: a registry reference, an OCI image layout
//! directory, or a `docker save` archive.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::reference::Reference;

/// Prefix of OCI image layout sources.
pub const OCI_PREFIX: &str = "oci:";
/// Prefix of docker-archive sources.
pub const DOCKER_ARCHIVE_PREFIX: &str = "docker-archive:";

/// An image source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// `alpine`, `localhost:5000/app:v1`, `quay.io/x/y@sha256:…`.
    Registry(Reference),
    /// `oci:/path/to/layout[:tag]`: an OCI image layout directory. The tag
    /// matches the `org.opencontainers.image.ref.name` annotation in
    /// index.json; without one the layout must hold a single image or one
    /// tagged `latest`.
    OciLayout {
        /// The layout directory (absolute).
        path: PathBuf,
        /// The tag, if given.
        tag: Option<String>,
    },
    /// `docker-archive:/path/to/image.tar[:name:tag]`: a `docker save`
    /// tarball; the optional reference picks one of several images by its
    /// `RepoTags` entry.
    DockerArchive {
        /// The tar file (absolute).
        path: PathBuf,
        /// Which image of the archive, if it holds several.
        reference: Option<String>,
    },
}

impl Source {
    /// Parses a source string.
    ///
    /// As in skopeo, the path of `oci:` and `docker-archive:` ends at the
    /// first `:` after the prefix, so such paths cannot contain a colon.
    /// A string starting with `/`, `./` or `../` is a path too (a reference
    /// never does): a directory is an OCI layout, a file a docker archive.
    pub fn parse(input: &str) -> Result<Source> {
        let invalid = |reason: &str| Error::InvalidSource {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = input.strip_prefix(OCI_PREFIX) {
            let (path, tag) = split_path(rest);
            if path.is_empty() {
                return Err(invalid("expected oci:/path/to/layout[:tag]"));
            }
            if tag.is_some_and(str::is_empty) {
                return Err(invalid("empty tag after ':'"));
            }
            return Ok(Source::OciLayout {
                path: absolute(path, input)?,
                tag: tag.map(str::to_string),
            });
        }
        if let Some(rest) = input.strip_prefix(DOCKER_ARCHIVE_PREFIX) {
            let (path, reference) = split_path(rest);
            if path.is_empty() {
                return Err(invalid(
                    "expected docker-archive:/path/to/image.tar[:name:tag]",
                ));
            }
            if reference.is_some_and(str::is_empty) {
                return Err(invalid("empty image reference after ':'"));
            }
            return Ok(Source::DockerArchive {
                path: absolute(path, input)?,
                reference: reference.map(str::to_string),
            });
        }
        if input.starts_with('/') || input.starts_with("./") || input.starts_with("../") {
            let path = absolute(input, input)?;
            return match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => Ok(Source::OciLayout { path, tag: None }),
                Ok(_) => Ok(Source::DockerArchive {
                    path,
                    reference: None,
                }),
                Err(e) => Err(invalid(&format!(
                    "{e} (a path must be an OCI layout directory or a docker save tarball)"
                ))),
            };
        }
        Reference::parse(input)
            .map(Source::Registry)
            .map_err(|reason| Error::InvalidReference {
                input: input.to_string(),
                reason,
            })
    }

    /// The key this source's image record is stored under; also its display
    /// form (`docker.io/library/alpine:latest`, `oci:/abs/dir:tag`).
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "{r}"),
            Source::OciLayout { path, tag } => {
                write!(f, "{OCI_PREFIX}{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Source::DockerArchive { path, reference } => {
                write!(f, "{DOCKER_ARCHIVE_PREFIX}{}", path.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Source::parse(s)
    }
}

fn split_path(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (rest, None),
    }
}

fn absolute(path: &str, input: &str) -> Result<PathBuf> {
    std::path::absolute(Path::new(path)).map_err(|e| Error::InvalidSource {
        input: input.to_string(),
        reason: e.to_string(),
    })
}
