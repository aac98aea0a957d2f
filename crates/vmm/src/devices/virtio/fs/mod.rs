//! virtio-fs: a host directory the guest mounts (`mount -t virtiofs TAG
//! DIR`), served in the worker.
//!
//! The guest's FUSE requests arrive on two queues: `hiprio` (FORGET,
//! BATCH_FORGET and INTERRUPT only, the requests that get no reply) and
//! one request queue (a Linux 6.1 guest uses only the first). Each chain
//! is one request; [`request`] decodes it with fuse-backend-rs's server
//! and answers through [`SharedDir`], our own file system over the host
//! directory. Requests are served on the device's event thread with the
//! device locked, like virtio-blk's: a snapshot, which locks every device,
//! then never sees a reply half written (see docs/design/virtio-fs.md for
//! why no pool of threads, yet).
//!
//! The device has no feature bits beyond virtio 1 (in particular no
//! notification queue, which a 6.1 guest does not implement) and a config
//! space of the tag and the number of request queues.

mod handles;
mod inodes;
mod io;
#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod lookup_tests;
mod mutate;
#[cfg(test)]
mod mutate_tests;
mod request;
mod shared_dir;
mod state;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

pub use handles::DEFAULT_MAX_HANDLES;
pub use inodes::DEFAULT_MAX_INODES;
pub use shared_dir::SharedDir;
pub use state::{FsRestoreError, FsState};

use super::persist::{DeviceRestoreError, DeviceState, Persist, QueueState};
use super::queue::{drain, report_broken};
use super::{read_config_bytes, Activation, Interrupt, VirtioDevice};
use fuse_backend_rs::api::server::Server;
use std::sync::Arc;
use supermachine_protocol::fs_spec::{check_tag, FsSpecError, MAX_TAG_LEN};
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// The queue of requests that get no reply (FORGET, BATCH_FORGET,
/// INTERRUPT).
const HIPRIO: usize = 0;
/// Largest size of the hiprio queue.
const HIPRIO_SIZE: u16 = 128;
/// Largest size of the request queue.
const REQUEST_SIZE: u16 = 1024;
/// Request queues offered (the config space's `num_request_queues`).
const REQUEST_QUEUES: u32 = 1;

/// What the device holds once the driver activated it.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-fs device serving one shared directory under one tag.
pub struct Fs {
    tag: String,
    /// The config space: the tag, NUL-padded to 36 bytes, then the number
    /// of request queues (le32).
    config: [u8; MAX_TAG_LEN + 1 + 4],
    server: Server<Arc<SharedDir>>,
    dir: Arc<SharedDir>,
    active: Option<Active>,
}

impl Fs {
    /// A device that shows `dir` to the guest under `tag` (checked: 1 to
    /// 35 bytes of `[A-Za-z0-9._-]`).
    pub fn new(tag: &str, dir: SharedDir) -> Result<Fs, FsSpecError> {
        check_tag(tag)?;
        let mut config = [0u8; MAX_TAG_LEN + 1 + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN + 1..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        let dir = Arc::new(dir);
        Ok(Fs {
            tag: tag.to_string(),
            config,
            server: Server::new(dir.clone()),
            dir,
            active: None,
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        "fs"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[HIPRIO_SIZE, REQUEST_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(&mut self, a: Activation) -> std::io::Result<()> {
        if a.queues.len() != 2 {
            return Err(std::io::Error::other("virtio-fs needs two queues"));
        }
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            interrupt: a.interrupt,
        });
        Ok(())
    }
    fn handle_queue(&mut self, index: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        if active.interrupt.is_broken() {
            return;
        }
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let (server, mem) = (&self.server, &active.mem);
        let served = drain(
            queue,
            mem,
            &active.interrupt,
            || true,
            |chain| request::serve(server, mem, chain, index == HIPRIO),
        );
        if let Err(e) = served {
            report_broken(&active.interrupt, "fs", index, &e);
        }
    }
    fn save(&self) -> DeviceState {
        DeviceState::Fs(Persist::save(self))
    }
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let DeviceState::Fs(state) = state else {
            return Err(DeviceRestoreError::wrong_kind(self.name(), state));
        };
        Ok(Persist::restore(self, state)?)
    }
    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(QueueState::from))
            .collect()
    }
}
