//! What a virtio-blk device keeps in a snapshot, and why a disk may not
//! stand in for the one that was saved.

use super::Block;
use crate::devices::virtio::persist::Persist;
use serde::{Deserialize, Serialize};

/// The disk as the guest saw it. The guest's page cache and filesystem
/// hold what the disk said at snapshot time, so a restore checks that the
/// disk it is given still says the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Whether the guest saw the disk read-only.
    pub read_only: bool,
    /// The disk's size in bytes.
    pub capacity_bytes: u64,
    /// The serial number the guest read (`VIRTIO_BLK_T_GET_ID`).
    pub id: Vec<u8>,
}

/// Why the disk a restore was given cannot stand in for the saved one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockRestoreError {
    /// A disk of another size is surely another disk.
    #[error("disk {disk}: {now} bytes now, {saved} when snapshotted")]
    Capacity {
        /// The disk's id, for the message.
        disk: String,
        /// The size of the disk given, in bytes.
        now: u64,
        /// The size when snapshotted.
        saved: u64,
    },
    /// A guest that mounted its disk writable must not find it read-only
    /// (its writes would fail), nor one it saw read-only writable (the
    /// host meant it to stay unchanged).
    #[error("disk {disk}: read-only {now} now, {saved} when snapshotted")]
    ReadOnly {
        /// The disk's id, for the message.
        disk: String,
        /// Whether the disk given is read-only.
        now: bool,
        /// Whether the saved one was.
        saved: bool,
    },
}

impl Persist for Block {
    type State = BlockState;
    type Error = BlockRestoreError;

    fn save(&self) -> BlockState {
        BlockState {
            read_only: self.disk.read_only(),
            capacity_bytes: self.disk.capacity_bytes(),
            id: self.disk.id().to_vec(),
        }
    }

    fn restore(&mut self, state: &BlockState) -> Result<(), BlockRestoreError> {
        let disk = || self.disk.id_text();
        if state.capacity_bytes != self.disk.capacity_bytes() {
            return Err(BlockRestoreError::Capacity {
                disk: disk(),
                now: self.disk.capacity_bytes(),
                saved: state.capacity_bytes,
            });
        }
        if state.read_only != self.disk.read_only() {
            return Err(BlockRestoreError::ReadOnly {
                disk: disk(),
                now: self.disk.read_only(),
                saved: state.read_only,
            });
        }
        Ok(())
    }
}
