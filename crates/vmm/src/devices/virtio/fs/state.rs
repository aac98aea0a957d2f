//! What a virtio-fs device keeps in a snapshot: the mount as the guest
//! knows it (tag, policy, read-only-ness), whether the guest has
//! initialized its session, and the nodes and open files the guest holds
//! (by parent and name, never a host path or a descriptor). A restore must
//! be given the same mount; the host path may differ, like a disk's. Each
//! node is opened again on first use, from its parent and name under the
//! policy's rules: a file gone (or now another kind of file) since the
//! snapshot is ESTALE for that node alone, and the guest looks it up again.

use super::handles::SavedHandle;
use super::inodes::SavedNode;
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
    /// The next node id to hand out.
    pub next_node: u64,
    /// The nodes the guest held, but the root.
    pub nodes: Vec<SavedNode>,
    /// The next file handle to hand out.
    pub next_handle: u64,
    /// The files and directories the guest held open.
    pub handles: Vec<SavedHandle>,
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
    /// The saved tables are not ones a device could have saved.
    #[error("the snapshot's table of files shared as {tag:?} is damaged: {reason}")]
    Table {
        /// The tag.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn options(symlinks: SymlinkPolicy, read_only: bool) -> String {
    format!("symlinks={symlinks}{}", if read_only { ",ro" } else { "" })
}

impl Persist for Fs {
    type State = FsState;
    type Error = FsRestoreError;

    fn save(&self) -> FsState {
        let ((next_node, nodes), (next_handle, handles)) = self.dir.save_tables();
        FsState {
            tag: self.tag.clone(),
            symlinks: self.dir.symlinks(),
            read_only: self.dir.read_only(),
            initialized: self.dir.initialized(),
            next_node,
            nodes,
            next_handle,
            handles,
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
        self.dir
            .restore_tables(state)
            .map_err(|reason| FsRestoreError::Table {
                tag: self.tag.clone(),
                reason,
            })?;
        self.dir.set_initialized(state.initialized);
        Ok(())
    }
}
