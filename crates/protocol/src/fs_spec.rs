//! A shared host directory (a virtio-fs mount) as one string, the way the
//! host library hands it to the worker (`--fs`) and the `supermachine`
//! command takes it:
//!
//! ```text
//! tag=TAG[,symlinks=deny|opaque|follow][,ro],path=/HOST/PATH
//! ```
//!
//! `path=` comes last and takes the rest of the string, so a host path may
//! hold any byte but NUL (commas, colons, `=` included) and still parses
//! back to itself: a `PATH:TAG:ro` form could not tell a colon in a path
//! from a separator.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The longest tag a guest can mount: virtio-fs keeps it in a 36-byte
/// field that the guest reads as a NUL-terminated string.
pub const MAX_TAG_LEN: usize = 35;

/// What the host does with symlinks under a shared directory.
///
/// ```
/// use supermachine_protocol::fs_spec::SymlinkPolicy;
/// assert_eq!("deny".parse::<SymlinkPolicy>(), Ok(SymlinkPolicy::Deny));
/// assert_eq!(SymlinkPolicy::default().to_string(), "opaque");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SymlinkPolicy {
    /// The guest can create no symlinks or hard links (EPERM), and a host
    /// symlink cannot be looked up (EACCES).
    Deny,
    /// Symlinks are shown as symlinks: the guest creates them with their
    /// targets stored as given and resolves them itself, in the guest; the
    /// host never follows one.
    #[default]
    Opaque,
    /// Host symlinks are followed on the host, wherever they lead: for a
    /// directory and a guest you trust.
    Follow,
}

impl SymlinkPolicy {
    /// The policy's name, as [`FromStr`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SymlinkPolicy::Deny => "deny",
            SymlinkPolicy::Opaque => "opaque",
            SymlinkPolicy::Follow => "follow",
        }
    }
}

impl fmt::Display for SymlinkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SymlinkPolicy {
    type Err = FsSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(SymlinkPolicy::Deny),
            "opaque" => Ok(SymlinkPolicy::Opaque),
            "follow" => Ok(SymlinkPolicy::Follow),
            other => Err(FsSpecError::Policy(other.to_string())),
        }
    }
}

/// Why a mount spec or tag was refused. Each message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsSpecError {
    /// The tag is empty, too long, or holds a byte other than
    /// `[A-Za-z0-9._-]`.
    #[error(
        "mount tag {0:?}: a tag is 1 to {MAX_TAG_LEN} bytes of letters, digits, '.', '_' or '-'"
    )]
    Tag(String),
    /// A symlink policy other than deny, opaque or follow.
    #[error("symlink policy {0:?}: use deny, opaque or follow")]
    Policy(String),
    /// The host path is missing, relative, or holds a NUL byte.
    #[error("mount path {0:?}: the host path must be absolute")]
    Path(String),
    /// A part of the spec this syntax does not have, or one given twice.
    #[error(
        "mount spec part {0:?}: the syntax is tag=TAG[,symlinks=deny|opaque|follow][,ro],path=/HOST/PATH"
    )]
    Part(String),
}

/// Checks a mount tag (see [`FsSpecError::Tag`]).
///
/// ```
/// use supermachine_protocol::fs_spec::check_tag;
/// assert!(check_tag("app-src_1.0").is_ok());
/// assert!(check_tag("").is_err() && check_tag("a b").is_err());
/// assert!(check_tag(&"t".repeat(36)).is_err());
/// ```
pub fn check_tag(tag: &str) -> Result<(), FsSpecError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !tag.bytes().all(allowed) {
        return Err(FsSpecError::Tag(tag.to_string()));
    }
    Ok(())
}

/// One shared directory.
///
/// ```
/// use supermachine_protocol::fs_spec::{FsSpec, SymlinkPolicy};
/// let spec: FsSpec = "tag=src,symlinks=deny,ro,path=/home/me/a,b:c".parse().unwrap();
/// assert_eq!(spec.tag, "src");
/// assert_eq!(spec.path.to_str(), Some("/home/me/a,b:c"));
/// assert_eq!((spec.symlinks, spec.read_only), (SymlinkPolicy::Deny, true));
/// assert_eq!(spec.to_string().parse::<FsSpec>().unwrap(), spec);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FsSpec {
    /// What the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The host directory shared.
    pub path: PathBuf,
    /// What happens to symlinks under it.
    pub symlinks: SymlinkPolicy,
    /// Whether the guest may only read.
    pub read_only: bool,
}

impl FromStr for FsSpec {
    type Err = FsSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (head, path) = match spec.split_once("path=") {
            Some((head, path)) if head.is_empty() || head.ends_with(',') => (head, path),
            _ => return Err(FsSpecError::Path(String::new())),
        };
        if !path.starts_with('/') || path.contains('\0') {
            return Err(FsSpecError::Path(path.to_string()));
        }
        let (mut tag, mut symlinks, mut read_only) = (None, None, false);
        for part in head.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("tag", t)) if tag.is_none() => tag = Some(t),
                Some(("symlinks", p)) if symlinks.is_none() => symlinks = Some(p.parse()?),
                None if part == "ro" && !read_only => read_only = true,
                _ => return Err(FsSpecError::Part(part.to_string())),
            }
        }
        let tag = tag.ok_or_else(|| FsSpecError::Tag(String::new()))?;
        check_tag(tag)?;
        Ok(FsSpec {
            tag: tag.to_string(),
            path: PathBuf::from(path),
            symlinks: symlinks.unwrap_or_default(),
            read_only,
        })
    }
}

impl fmt::Display for FsSpec {
    /// The spec [`FromStr`] parses back to `self` (for a path that is valid
    /// UTF-8; others are shown lossily and do not round-trip).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag={},symlinks={}", self.tag, self.symlinks)?;
        if self.read_only {
            f.write_str(",ro")?;
        }
        write!(f, ",path={}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_whatever_the_path_holds() {
        for path in [
            "/",
            "/a",
            "/with,comma",
            "/with:colon:ro",
            "/x/path=/y",
            "/é t",
        ] {
            for symlinks in [
                SymlinkPolicy::Deny,
                SymlinkPolicy::Opaque,
                SymlinkPolicy::Follow,
            ] {
                for read_only in [false, true] {
                    let spec = FsSpec {
                        tag: "t".into(),
                        path: path.into(),
                        symlinks,
                        read_only,
                    };
                    assert_eq!(spec.to_string().parse::<FsSpec>(), Ok(spec.clone()));
                }
            }
        }
    }

    #[test]
    fn parts_default_and_come_in_any_order_before_the_path() {
        let spec: FsSpec = "ro,tag=a,path=/p".parse().unwrap();
        assert_eq!(spec.symlinks, SymlinkPolicy::Opaque);
        assert!(spec.read_only);
        let spec: FsSpec = "symlinks=follow,tag=b,path=/p".parse().unwrap();
        assert_eq!((spec.tag.as_str(), spec.read_only), ("b", false));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let kind = |e: &FsSpecError| match e {
            FsSpecError::Tag(_) => "tag",
            FsSpecError::Policy(_) => "policy",
            FsSpecError::Path(_) => "path",
            FsSpecError::Part(_) => "part",
        };
        for (spec, expected) in [
            ("tag=a", "path"),
            ("tag=a,path=relative", "path"),
            ("tag=a,path=/nul\0", "path"),
            ("tag=apath=/p", "path"),
            ("path=/p", "tag"),
            ("tag=,path=/p", "tag"),
            ("tag=a/b,path=/p", "tag"),
            ("tag=a,tag=b,path=/p", "part"),
            ("tag=a,ro,ro,path=/p", "part"),
            ("tag=a,rw,path=/p", "part"),
            ("tag=a,symlinks=maybe,path=/p", "policy"),
        ] {
            let e = spec.parse::<FsSpec>().unwrap_err();
            assert_eq!(kind(&e), expected, "{spec:?}: {e}");
        }
        let long = format!("tag={},path=/p", "t".repeat(MAX_TAG_LEN + 1));
        assert!(matches!(long.parse::<FsSpec>(), Err(FsSpecError::Tag(_))));
        let longest = format!("tag={},path=/p", "t".repeat(MAX_TAG_LEN));
        assert!(longest.parse::<FsSpec>().is_ok());
    }
}
