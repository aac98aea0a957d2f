//! virtio-vsock implemented in the worker process (no vhost: the host
//! kernel may not have it, and snapshots need the device state here).
//! Queue 0 carries packets to the guest, queue 1 packets from it, queue 2
//! transport events.
//!
//! - [`muxer`]: guest streams ↔ host Unix sockets, and the handshake;
//! - [`connection`]: one stream's buffers and credit;
//! - [`packet`]: the packet header;
//! - [`state`]: what a snapshot keeps ([`VsockState`]).

mod connection;
mod muxer;
mod packet;
mod state;
#[cfg(test)]
mod tests;

pub use state::{VsockRestoreError, VsockState};

use super::persist::{DeviceRestoreError, DeviceState, Persist, QueueState};
use super::queue::{drain, pop, report_broken, QueueError};
use super::{read_config_bytes, Activation, Interrupt, VirtioDevice};
use muxer::Muxer;
use packet::{Header, HEADER_LEN};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `virtio_vsock_event.id` for "all connections are gone; re-read the CID".
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZE: u16 = 256;
/// Largest payload we accept in one guest packet (Linux sends ≤ 64 KiB).
const MAX_PAYLOAD: usize = 64 * 1024;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device whose guest streams end at host Unix sockets
/// (see the module doc); its event thread also serves the muxer's sockets.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    payload: Vec<u8>,
    /// The TX queue was left unread because the muxer's replies were
    /// full; read on once the guest has taken some.
    tx_stalled: bool,
}

impl Vsock {
    /// Binds the host muxer socket at `uds_path` (see [`muxer`]).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Vsock> {
        Ok(Vsock {
            guest_cid,
            muxer: Muxer::bind(uds_path, guest_cid)?,
            active: None,
            payload: Vec::new(),
            tx_stalled: false,
        })
    }

    /// Runs `serve` over the active queues, unless the device is broken;
    /// breaks it if the driver broke a queue.
    fn serve(&mut self, serve: impl FnOnce(&mut Self) -> Result<(), (usize, QueueError)>) {
        let Some(a) = &self.active else { return };
        if a.interrupt.is_broken() {
            return;
        }
        if let Err((queue, e)) = serve(self) {
            if let Some(a) = &self.active {
                report_broken(&a.interrupt, "vsock", queue, &e);
            }
            // Nothing more reaches the guest: let the host ends go now
            // rather than leave them waiting on a device that is gone.
            self.muxer.shut_down();
        }
    }

    /// Reads the guest's packets while the muxer has room for the replies
    /// they may need (see `muxer::MAX_PENDING_CONTROL`).
    fn process_tx(&mut self) -> Result<(), (usize, QueueError)> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let muxer = &mut self.muxer;
        let payload = &mut self.payload;
        let mem = &a.mem;
        let room = std::cell::Cell::new(muxer.accepts_guest_packets());
        let taken = drain(
            &mut a.queues[TX],
            mem,
            &a.interrupt,
            || room.get(),
            |chain| {
                let mut reader = match Reader::<()>::new(mem, chain) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("vsock tx: unreadable descriptor chain: {e:?}");
                        return 0;
                    }
                };
                let Ok(h) = reader.read_obj::<Header>() else {
                    tracing::debug!("vsock tx: packet shorter than a header");
                    return 0;
                };
                let len = (h.len as usize)
                    .min(MAX_PAYLOAD)
                    .min(reader.available_bytes());
                payload.resize(len, 0);
                match reader.read_exact(payload) {
                    Ok(()) => muxer.handle_guest_packet(h, payload),
                    Err(e) => tracing::debug!("vsock tx: payload read: {e}"),
                }
                room.set(muxer.accepts_guest_packets());
                0
            },
        );
        self.tx_stalled = !room.get();
        taken.map_err(|e| (TX, e))
    }

    /// Fills RX buffers, and reads on from a stalled TX queue as far as
    /// that made room.
    fn exchange(&mut self) -> Result<(), (usize, QueueError)> {
        self.process_rx()?;
        if self.tx_stalled && self.muxer.accepts_guest_packets() {
            self.process_tx()?;
            self.process_rx()?;
        }
        Ok(())
    }

    /// Tells the guest driver that every connection it had is gone (the
    /// host side of them did not survive the snapshot). Linux resets its
    /// connected sockets and keeps its listening ones, so the agent keeps
    /// serving on the same port.
    ///
    /// Returns whether the event was posted: the guest will then kick the
    /// event queue once it has reset its sockets and re-posted the buffer.
    fn post_transport_reset(&mut self) -> Result<bool, (usize, QueueError)> {
        let Some(a) = &mut self.active else {
            return Ok(false);
        };
        let mem = &a.mem;
        let queue = &mut a.queues[EVENT];
        let Some(chain) = pop(queue, mem).map_err(|e| (EVENT, e))? else {
            tracing::warn!("vsock: no event buffer for the transport reset");
            return Ok(false);
        };
        let head = chain.head_index();
        let len = match Writer::<()>::new(mem, chain) {
            Ok(mut w) => match w.write_obj(EVENT_TRANSPORT_RESET.to_le()) {
                Ok(()) => 4,
                Err(e) => {
                    tracing::warn!("vsock: writing the transport reset event: {e:?}");
                    0
                }
            },
            Err(e) => {
                tracing::warn!("vsock: event buffer: {e:?}");
                0
            }
        };
        queue
            .add_used(mem, head, len)
            .map_err(|e| (EVENT, QueueError::Ring(e)))?;
        if queue.needs_notification(mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        Ok(len > 0)
    }

    /// Fills RX buffers while the muxer has packets for the guest.
    fn process_rx(&mut self) -> Result<(), (usize, QueueError)> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let mem = &a.mem;
        let queue = &mut a.queues[RX];
        let mut used_any = false;
        let mut filled = || -> Result<(), QueueError> {
            while self.muxer.has_work_for_guest() {
                let Some(chain) = pop(queue, mem)? else {
                    break;
                };
                let head = chain.head_index();
                let len = match Writer::<()>::new(mem, chain) {
                    Ok(mut w) => {
                        let room = w.available_bytes().saturating_sub(HEADER_LEN);
                        match self.muxer.next_for_guest(room, &mut self.payload) {
                            Some(h) => {
                                let ok =
                                    w.write_obj(h).is_ok() && w.write_all(&self.payload).is_ok();
                                if ok {
                                    (HEADER_LEN + self.payload.len()) as u32
                                } else {
                                    0
                                }
                            }
                            None => 0,
                        }
                    }
                    Err(_) => 0,
                };
                queue.add_used(mem, head, len).map_err(QueueError::Ring)?;
                used_any = true;
            }
            Ok(())
        };
        let result = filled();
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        result.map_err(|e| (RX, e))
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data)
    }
    fn activate(&mut self, a: Activation) -> io::Result<()> {
        if a.queues.len() != 3 {
            return Err(io::Error::other("vsock needs three queues"));
        }
        self.muxer.activate(a.poller)?;
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            interrupt: a.interrupt,
        });
        Ok(())
    }
    fn handle_queue(&mut self, index: usize) {
        tracing::debug!(index, "vsock: queue kick");
        self.serve(|vsock| {
            if index == TX {
                vsock.process_tx()?;
            }
            if index == EVENT {
                // The guest re-posts its event buffer after handling the
                // transport reset: its old sockets are gone, new ones are safe.
                vsock.muxer.release_held();
            }
            // Every kick may free RX buffers or create replies for the guest.
            vsock.exchange()
        });
    }
    fn save(&self) -> DeviceState {
        DeviceState::Vsock(Persist::save(self))
    }
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let DeviceState::Vsock(state) = state else {
            return Err(DeviceRestoreError::wrong_kind(self.name(), state));
        };
        Ok(Persist::restore(self, state)?)
    }
    fn after_restore(&mut self) {
        self.serve(|vsock| {
            if vsock.post_transport_reset()? {
                vsock.muxer.hold_new_connections();
            }
            vsock.process_tx()?;
            vsock.exchange()
        });
    }
    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(QueueState::from))
            .collect()
    }
    fn handle_fd(&mut self, token: u64, events: EventSet) {
        self.serve(|vsock| {
            vsock.muxer.handle_fd(token, events);
            vsock.exchange()
        });
    }
}
