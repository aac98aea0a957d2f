//! What a virtio device keeps in a snapshot, and how it comes back.
//!
//! Every device owns its saved state (`block::BlockState`, …) and says
//! through [`Persist`] how to save it and when a freshly built device can
//! stand in for the one that saved it. This module holds only what they
//! share: the virtqueue and virtio-mmio register states, and
//! [`DeviceState`], the thin enum that records which device a state
//! belongs to.
//!
//! The states are plain serializable data: no fds, no guest memory,
//! nothing that only makes sense in this process. They are stored with
//! postcard (see `snapshot::format`), which is not self-describing: the
//! order of [`DeviceState`]'s variants and of every field is the on-disk
//! format. Reordering either needs a new `FORMAT_VERSION`.

use super::block::{BlockRestoreError, BlockState};
use super::fs::{FsRestoreError, FsState};
use super::net::NetState;
use super::rng::RngState;
use super::vsock::{VsockRestoreError, VsockState};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

/// Saving a device's state and rebuilding the device from it.
///
/// A restore builds each device exactly as a boot would, from the host's
/// configuration (the disk file, the socket path), and then hands it the
/// saved state: the device takes what it needs from it, or refuses with
/// the reason it cannot stand in for the device that saved it (another
/// disk size, another CID).
pub trait Persist {
    /// The device's own saved state.
    type State: Serialize + for<'de> Deserialize<'de>;
    /// Why a device cannot take a saved state.
    type Error: std::error::Error;

    /// The device's state, for a snapshot.
    fn save(&self) -> Self::State;
    /// Puts a freshly built, not yet activated device into `state`.
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}

/// A saved device, tagged with its kind.
///
/// Postcard stores a variant as its index followed by its fields, so the
/// variant order below is fixed by every snapshot written so far: Block 0,
/// Rng 1, Vsock 2, Fs 3, Net 4. A new device goes at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A virtio-blk device.
    Block(BlockState),
    /// A virtio-rng device.
    Rng(RngState),
    /// A virtio-vsock device.
    Vsock(VsockState),
    /// A virtio-fs device (a shared host directory).
    Fs(FsState),
    /// A virtio-net device.
    Net(NetState),
}

impl DeviceState {
    /// The device's short name, as in [`super::VirtioDevice::name`].
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "blk",
            DeviceState::Rng(_) => "rng",
            DeviceState::Vsock(_) => "vsock",
            DeviceState::Fs(_) => "fs",
            DeviceState::Net(_) => "net",
        }
    }
}

/// Why a device refused a saved state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    /// The saved state is another kind of device's: the restore was given
    /// other devices, or the same ones in another order.
    #[error("a virtio-{device} device cannot take the saved state of a virtio-{saved} device (give the restore the devices the snapshotted VM had, in the same order)")]
    WrongKind {
        /// The kind of the device being restored, e.g. `"blk"`.
        device: &'static str,
        /// The kind the state belongs to.
        saved: &'static str,
    },
    /// The block device refused its saved state.
    #[error(transparent)]
    Block(#[from] BlockRestoreError),
    /// The vsock device refused its saved state.
    #[error(transparent)]
    Vsock(#[from] VsockRestoreError),
    /// The virtio-fs device refused its saved state.
    #[error(transparent)]
    Fs(#[from] FsRestoreError),
}

impl DeviceRestoreError {
    /// [`WrongKind`](Self::WrongKind) for a device of kind `device` handed
    /// `saved`.
    pub fn wrong_kind(device: &'static str, saved: &DeviceState) -> Self {
        DeviceRestoreError::WrongKind {
            device,
            saved: saved.kind(),
        }
    }
}

/// A virtqueue as the driver configured it and as far as the device got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The largest size the device allows.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver marked the queue ready.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring.
    pub avail_ring: u64,
    /// Guest physical address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated (interrupt suppression by
    /// index).
    pub event_idx: bool,
}

impl From<&Queue> for QueueState {
    fn from(q: &Queue) -> Self {
        QueueState {
            max_size: q.max_size(),
            size: q.size(),
            ready: q.ready(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            event_idx: q.event_idx_enabled(),
        }
    }
}

/// A saved virtqueue no device could have had.
#[derive(Debug, thiserror::Error)]
#[error("invalid saved virtqueue: {0:?}")]
pub struct InvalidQueue(virtio_queue::Error);

impl QueueState {
    /// The queue this state describes, for a restore. Fails on a state no
    /// device could have had (e.g. a size that is not a power of two).
    pub fn to_queue(&self) -> Result<Queue, InvalidQueue> {
        Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(InvalidQueue)
    }
}

/// The virtio-mmio registers plus the device behind them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// `DeviceFeaturesSel`: which 32-bit half of the offered features the
    /// driver reads.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`: which half of the accepted features it writes.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// `QueueSel`: the queue the queue registers address.
    pub queue_sel: u32,
    /// The device status the driver wrote (NEEDS_RESET included if the device
    /// was broken).
    pub status: u32,
    /// Whether the device was active (DRIVER_OK reached and activation done).
    pub activated: bool,
    /// Interrupt status bits the driver had not acknowledged.
    pub interrupt_status: u32,
    /// The queues as the device uses them once active, else as configured.
    pub queues: Vec<QueueState>,
    /// The device's own state.
    pub device: DeviceState,
}

/// Why a transport could not be put into a saved state.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    /// The snapshot has another number of queues than the device.
    #[error("virtio-{device}: the snapshot has {saved} queues, the device {actual}")]
    QueueCount {
        /// The device's kind.
        device: &'static str,
        /// Queues in the snapshot.
        saved: usize,
        /// Queues the device has.
        actual: usize,
    },
    /// A saved queue is one no device could have had.
    #[error("virtio-{device}: queue {index}: {source}")]
    Queue {
        /// The device's kind.
        device: &'static str,
        /// The queue's index.
        index: usize,
        /// What is wrong with it.
        source: InvalidQueue,
    },
    /// The device refused its own saved state.
    #[error(transparent)]
    Device(#[from] DeviceRestoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(device: DeviceState) -> TransportState {
        TransportState {
            device_features_sel: 1,
            driver_features_sel: 1,
            acked_features: 1 << 32,
            queue_sel: 0,
            status: 15,
            activated: true,
            interrupt_status: 1,
            queues: vec![QueueState {
                max_size: 256,
                size: 128,
                ready: true,
                desc_table: 0x1000,
                avail_ring: 0x2000,
                used_ring: 0x3000,
                next_avail: 7,
                next_used: 6,
                event_idx: false,
            }],
            device,
        }
    }

    /// The bytes the one-enum-for-all-devices layout (before each device
    /// owned its state) wrote for these states: snapshots taken then must
    /// still restore.
    #[test]
    fn device_states_keep_their_serialized_form() {
        let head: &[u8] = &[
            1, 1, 128, 128, 128, 128, 16, 0, 15, 1, 1, 1, 128, 2, 128, 1, 1, 128, 32, 128, 64, 128,
            96, 7, 6, 0,
        ];
        let mut id = b"disk0".to_vec();
        id.resize(20, 0);
        let block = DeviceState::Block(BlockState {
            read_only: true,
            capacity_bytes: 1 << 20,
            id,
        });
        let mut block_bytes = head.to_vec();
        block_bytes.extend([0, 1, 128, 128, 64, 20, 100, 105, 115, 107, 48]);
        block_bytes.extend([0; 15]);
        let mut rng_bytes = head.to_vec();
        rng_bytes.push(1);
        let mut vsock_bytes = head.to_vec();
        vsock_bytes.extend([2, 3]);
        // Variant 3, tag "ab", Opaque (variant 1), read-only, not
        // initialized, next node 2, no nodes, next handle 1, no handles.
        let mut fs_bytes = head.to_vec();
        fs_bytes.extend([3, 2, b'a', b'b', 1, 1, 0, 2, 0, 1, 0]);
        let fs = DeviceState::Fs(super::super::fs::FsState {
            tag: "ab".into(),
            symlinks: supermachine_protocol::fs_spec::SymlinkPolicy::Opaque,
            read_only: true,
            initialized: false,
            next_node: 2,
            nodes: Vec::new(),
            next_handle: 1,
            handles: Vec::new(),
        });
        for (state, bytes) in [
            (block, block_bytes),
            (DeviceState::Rng(RngState), rng_bytes),
            (DeviceState::Vsock(VsockState { guest_cid: 3 }), vsock_bytes),
            (fs, fs_bytes),
        ] {
            let t = transport(state);
            assert_eq!(postcard::to_allocvec(&t).unwrap(), bytes, "{t:?}");
            assert_eq!(postcard::from_bytes::<TransportState>(&bytes).unwrap(), t);
        }
    }
}
