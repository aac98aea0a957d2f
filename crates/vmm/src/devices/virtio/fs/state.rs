//! What a virtio-fs device keeps in a snapshot: the mount as the guest
//! knows it (tag, policy, read-only-ness) and whether the guest has
//! initialized its session. A restore must be given the same mount; the
//! host path may differ, like a disk's.
//!
//! The inode and handle tables come with the lookups that fill them.

use super::Fs;
use crate::devices::virtio::persist::Persist;
use serde::{Deserialize, Serialize};
use supermachine_protocol::fs_spec::SymlinkPolicy;

/// A virtio-fs device's saved state. Field order is the stored format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// The tag the guest mounted.
    pub tag: String,
    /// The symlink policy it was served under.
    pub symlinks: SymlinkPolicy,
    /// Whether it was read-only.
    pub read_only: bool,
    /// Whether the guest had sent INIT.
    pub initialized: bool,
}

/// Why a virtio-fs device cannot stand in for the one that saved a state:
/// the guest would see another mount than the one it had.
#[derive(Debug, thiserror::Error)]
pub enum FsRestoreError {
    /// Another tag.
    #[error("the snapshot shares a directory under tag {saved:?}, this VM under {given:?}")]
    Tag {
        /// The saved tag.
        saved: String,
        /// The tag of the device being restored.
        given: String,
    },
    /// Another symlink policy or read-only-ness: the guest was promised
    /// other rules.
    #[error("the snapshot shares {tag:?} as {saved}, this VM as {given}: give the restore the same mount options")]
    Options {
        /// The tag.
        tag: String,
        /// The saved options, e.g. "symlinks=opaque,ro".
        saved: String,
        /// The options of the device being restored.
        given: String,
    },
}

fn options(symlinks: SymlinkPolicy, read_only: bool) -> String {
    format!("symlinks={symlinks}{}", if read_only { ",ro" } else { "" })
}

impl Persist for Fs {
    type State = FsState;
    type Error = FsRestoreError;

    fn save(&self) -> FsState {
        FsState {
            tag: self.tag.clone(),
            symlinks: self.dir.symlinks(),
            read_only: self.dir.read_only(),
            initialized: self.dir.initialized(),
        }
    }

    fn restore(&mut self, state: &FsState) -> Result<(), FsRestoreError> {
        if state.tag != self.tag {
            return Err(FsRestoreError::Tag {
                saved: state.tag.clone(),
                given: self.tag.clone(),
            });
        }
        let (saved, given) = (
            options(state.symlinks, state.read_only),
            options(self.dir.symlinks(), self.dir.read_only()),
        );
        if saved != given {
            return Err(FsRestoreError::Options {
                tag: self.tag.clone(),
                saved,
                given,
            });
        }
        self.dir.set_initialized(state.initialized);
        Ok(())
    }
}
