//! What a virtio-vsock device keeps in a snapshot: only the guest's CID.
//! Streams are not saved: their host ends (Unix sockets of this process)
//! do not survive it, so a restored guest gets a transport reset and its
//! agent serves new connections.

use super::Vsock;
use crate::devices::virtio::persist::Persist;
use serde::{Deserialize, Serialize};

/// The vsock device as the guest knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
}

/// Why a vsock device cannot stand in for the saved one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockRestoreError {
    /// The guest kernel read its CID at boot and keeps it; the host must
    /// reach it at the same one.
    #[error("vsock: CID {now} now, {saved} when snapshotted")]
    Cid {
        /// The CID the restore was given.
        now: u64,
        /// The CID the guest has.
        saved: u64,
    },
}

impl Persist for Vsock {
    type State = VsockState;
    type Error = VsockRestoreError;

    fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
        }
    }

    fn restore(&mut self, state: &VsockState) -> Result<(), VsockRestoreError> {
        if state.guest_cid != self.guest_cid {
            return Err(VsockRestoreError::Cid {
                now: self.guest_cid,
                saved: state.guest_cid,
            });
        }
        Ok(())
    }
}
