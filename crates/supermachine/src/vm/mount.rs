//! Host directories shared with a VM (virtio-fs): what the caller asks
//! for, checked before the VM starts.

use crate::error::Error;
use std::path::{Path, PathBuf};
use supermachine_protocol::fs_spec::{check_tag, FsSpec};
pub use supermachine_protocol::fs_spec::{SymlinkPolicy, MAX_TAG_LEN};

/// A host directory the guest sees live: its writes land on the host and
/// host edits show on the guest's next access. The guest mounts it with
/// `mount -t virtiofs TAG DIR`, or the agent does at boot when
/// `guest_path` is set.
///
/// ```
/// use supermachine::{Mount, SymlinkPolicy};
/// let src = Mount::new("/home/me/project", "src").at("/app").symlinks(SymlinkPolicy::Deny);
/// assert_eq!(src.guest_path.as_deref(), Some("/app"));
/// assert!(!src.read_only);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// The name the guest mounts it by: 1 to 35 bytes of letters, digits,
    /// `.`, `_` or `-`, unique in the VM.
    pub tag: String,
    /// What the host does with symlinks in it (default: opaque: shown as
    /// symlinks, resolved only in the guest).
    pub symlinks: SymlinkPolicy,
    /// The guest may only read it.
    pub read_only: bool,
    /// Where the agent mounts it at boot; `None`: the guest mounts it.
    pub guest_path: Option<String>,
}

impl Mount {
    /// `host_path` shared as `tag`, writable, symlinks opaque, not
    /// mounted by the agent.
    pub fn new(host_path: impl Into<PathBuf>, tag: impl Into<String>) -> Mount {
        Mount {
            host_path: host_path.into(),
            tag: tag.into(),
            symlinks: SymlinkPolicy::Opaque,
            read_only: false,
            guest_path: None,
        }
    }

    /// Has the agent mount it at `guest_path` at boot.
    pub fn at(mut self, guest_path: impl Into<String>) -> Mount {
        self.guest_path = Some(guest_path.into());
        self
    }

    /// Sets the symlink policy.
    pub fn symlinks(mut self, policy: SymlinkPolicy) -> Mount {
        self.symlinks = policy;
        self
    }

    /// Makes it read-only.
    pub fn read_only(mut self) -> Mount {
        self.read_only = true;
        self
    }
}

/// The worker's specs for `mounts`, each checked: a valid tag, used once;
/// a host path that is a directory (followed if it is a symlink: the
/// caller named it), not `/`; a guest path that is absolute.
pub(crate) fn worker_specs(mounts: &[Mount]) -> Result<Vec<FsSpec>, Error> {
    let mut specs: Vec<FsSpec> = Vec::with_capacity(mounts.len());
    for mount in mounts {
        let bad = |why: String| Error::InvalidArgument(format!("mount {:?}: {why}", mount.tag));
        check_tag(&mount.tag).map_err(|e| bad(e.to_string()))?;
        if specs.iter().any(|s| s.tag == mount.tag) {
            return Err(bad("the tag is used twice".into()));
        }
        if let Some(path) = &mount.guest_path {
            if !path.starts_with('/') || path.contains(['\0', ' ', '\n', '\t']) {
                return Err(bad(format!(
                    "guest path {path:?} must be absolute, without spaces or control characters"
                )));
            }
        }
        let path = std::fs::canonicalize(&mount.host_path)
            .map_err(|e| bad(format!("host path {}: {e}", mount.host_path.display())))?;
        if !path.is_dir() {
            return Err(bad(format!("{} is not a directory", path.display())));
        }
        if path == Path::new("/") {
            return Err(bad("sharing the host's / is refused".into()));
        }
        std::fs::read_dir(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        specs.push(FsSpec {
            tag: mount.tag.clone(),
            path,
            symlinks: mount.symlinks,
            read_only: mount.read_only,
        });
    }
    Ok(specs)
}

/// The kernel command line parameters that have the agent mount each
/// mount with a guest path: `supermachine.mount=TAG:PATH[:ro]`.
pub(crate) fn boot_args(mounts: &[Mount]) -> Vec<String> {
    mounts
        .iter()
        .filter_map(|m| {
            let path = m.guest_path.as_ref()?;
            let ro = if m.read_only { ":ro" } else { "" };
            Some(format!("supermachine.mount={}:{path}{ro}", m.tag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_mounts_are_refused_before_boot_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let cases = [
            (Mount::new(dir.path(), "t".repeat(36)), "1 to 35 bytes"),
            (Mount::new(dir.path(), "a b"), "1 to 35 bytes"),
            (Mount::new(&file, "f"), "is not a directory"),
            (Mount::new(dir.path().join("missing"), "m"), "host path"),
            (Mount::new("/", "root"), "sharing the host's / is refused"),
            (
                Mount::new(dir.path(), "g").at("relative"),
                "must be absolute",
            ),
        ];
        for (mount, why) in cases {
            let e = worker_specs(std::slice::from_ref(&mount))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{mount:?}: {e}");
        }
        let twice = [Mount::new(dir.path(), "a"), Mount::new(dir.path(), "a")];
        assert!(worker_specs(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn good_mounts_become_worker_specs_and_boot_args() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = [
            Mount::new(dir.path(), "src").at("/app").read_only(),
            Mount::new(dir.path(), "cache").symlinks(SymlinkPolicy::Follow),
        ];
        let specs = worker_specs(&mounts).unwrap();
        assert_eq!(specs[0].path, std::fs::canonicalize(dir.path()).unwrap());
        assert!(specs[0].read_only && !specs[1].read_only);
        assert_eq!(specs[1].symlinks, SymlinkPolicy::Follow);
        assert_eq!(boot_args(&mounts), ["supermachine.mount=src:/app:ro"]);
    }
}
