//! virtio-blk over a host file: read-only or read-write, flush, and files
//! that may be sparse (reads of holes are zeros; nothing is preallocated).
//!
//! - [`request`]: one request against the host file ([`Disk`]);
//! - [`state`]: what a snapshot keeps ([`BlockState`]) and restore checks.

mod request;
mod state;
#[cfg(test)]
mod tests;

pub use request::Disk;
pub use state::{BlockRestoreError, BlockState};

use super::persist::{DeviceRestoreError, DeviceState, Persist, QueueState};
use super::queue::SingleQueue;
use super::{feature, read_config_bytes, Activation, VirtioDevice};
use request::SECTOR_SIZE;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

const F_SEG_MAX: u64 = feature(VIRTIO_BLK_F_SEG_MAX);
const F_RO: u64 = feature(VIRTIO_BLK_F_RO);
const F_FLUSH: u64 = feature(VIRTIO_BLK_F_FLUSH);
const QUEUE_SIZE: u16 = 256;
/// Segments per request we accept (config `seg_max`).
const SEG_MAX: u32 = 126;

/// A virtio-blk device: one request queue served on its event thread,
/// against one host file ([`Disk`]).
pub struct Block {
    disk: Disk,
    config: Vec<u8>,
    active: Option<SingleQueue>,
}

impl Block {
    /// Opens `path` as a disk: a regular file (a FIFO would block, a
    /// device has no size we read) whose size is a whole number of sectors.
    pub fn open(path: &Path, read_only: bool, id: &str) -> io::Result<Block> {
        let in_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            // Opens a FIFO at once, to be refused below.
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        crate::files::require_regular(&file).map_err(in_path)?;
        crate::files::clear_nonblocking(&file)?;
        lock(&file, read_only).map_err(in_path)?;
        let disk = Disk::new(file, read_only, id).map_err(in_path)?;
        Ok(Block::new(disk))
    }

    /// A device for `disk`, not yet active.
    pub fn new(disk: Disk) -> Block {
        let mut config = (disk.capacity_bytes() / SECTOR_SIZE).to_le_bytes().to_vec();
        config.extend_from_slice(&0u32.to_le_bytes()); // size_max (unused)
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        Block {
            disk,
            config,
            active: None,
        }
    }
}

/// Locks the disk for as long as the device holds it (the lock goes with
/// the open file): exclusively when writable, so a second VM writing the
/// same file (two kernels on one filesystem) is refused; shared when
/// read-only, so many VMs can read one image but none while another writes
/// it.
fn lock(file: &std::fs::File, read_only: bool) -> io::Result<()> {
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a file descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        let why = if read_only {
            "another VM has it open for writing"
        } else {
            "it is in use by another VM (a writable disk or volume belongs to one VM at a time)"
        };
        return Err(io::Error::new(io::ErrorKind::ResourceBusy, why));
    }
    Err(e)
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "blk"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH | if self.disk.read_only() { F_RO } else { 0 }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(&mut self, a: Activation) -> io::Result<()> {
        self.active = Some(SingleQueue::activate(a, "blk")?);
        Ok(())
    }
    fn save(&self) -> DeviceState {
        DeviceState::Block(Persist::save(self))
    }
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let DeviceState::Block(state) = state else {
            return Err(DeviceRestoreError::wrong_kind(self.name(), state));
        };
        Ok(Persist::restore(self, state)?)
    }
    fn active_queues(&self) -> Vec<QueueState> {
        SingleQueue::state(&self.active)
    }
    fn handle_queue(&mut self, _index: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        let disk = &mut self.disk;
        active.drain(|mem, chain| disk.serve(mem, chain));
    }
}
