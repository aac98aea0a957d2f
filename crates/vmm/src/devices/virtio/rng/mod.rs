//! virtio-rng: fills guest buffers from the host's getrandom(2), so the
//! guest kernel's entropy pool is seeded from the first moments of boot.

mod state;
#[cfg(test)]
mod tests;

pub use state::RngState;

use super::persist::{DeviceRestoreError, DeviceState, Persist, QueueState};
use super::queue::SingleQueue;
use super::{read_config_bytes, Activation, VirtioDevice};
use std::io::Write;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Writer;

/// Largest amount handed out per request; the guest asks again for more.
const MAX_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

/// A virtio-rng device: one request queue, no features, no config space.
/// [`Default`] gives one not yet active.
#[derive(Default)]
pub struct Rng {
    active: Option<SingleQueue>,
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "rng"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data)
    }
    fn activate(&mut self, a: Activation) -> std::io::Result<()> {
        self.active = Some(SingleQueue::activate(a, "rng")?);
        Ok(())
    }
    fn save(&self) -> DeviceState {
        DeviceState::Rng(Persist::save(self))
    }
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let DeviceState::Rng(state) = state else {
            return Err(DeviceRestoreError::wrong_kind(self.name(), state));
        };
        let Ok(()) = Persist::restore(self, state);
        Ok(())
    }
    fn active_queues(&self) -> Vec<QueueState> {
        SingleQueue::state(&self.active)
    }
    fn handle_queue(&mut self, _index: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        let mut buf = vec![0u8; MAX_PER_REQUEST];
        active.drain(|mem, chain| {
            let Ok(mut w) = Writer::<()>::new(mem, chain) else {
                return 0;
            };
            let n = w.available_bytes().min(MAX_PER_REQUEST);
            if getrandom(&mut buf[..n]).is_err() {
                return 0;
            }
            w.write_all(&buf[..n]).map(|_| n as u32).unwrap_or(0)
        });
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(())
}
