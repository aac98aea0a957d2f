//! virtio-net: the guest's Ethernet link to a user-mode network stack on
//! the host (see [`backend`]), every frame the guest sends checked against
//! the egress policy first (see [`filter`]).
//!
//! Two queues, RX (frames for the guest) and TX (frames from it), no
//! offloads: the guest computes its checksums and segments its own TCP, so
//! every frame fits one 1,518-byte buffer of the kind a Linux driver posts
//! without mergeable buffers. Frames flow only as fast as both ends take
//! them: RX frames wait in the backend (its socket left unread) until the
//! guest posts buffers, and the TX queue is left unread while the stack's
//! socket is full.

pub mod backend;
pub mod filter;
mod state;
#[cfg(test)]
mod tests;

pub use backend::Backend;
pub use filter::EgressFilter;
pub use state::NetState;

use super::persist::{DeviceRestoreError, DeviceState, Persist, QueueState};
use super::queue::{drain, report_broken, QueueError};
use super::{
    feature, read_config_bytes, Activation, Interrupt, Poller, VirtioDevice, FIRST_DEVICE_TOKEN,
};
use backend::{Received, MAX_FRAME};
use filter::Verdict;
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: what precedes every frame in a buffer
/// (virtio 1.x always has the `num_buffers` field).
const HEADER_LEN: usize = 12;
/// The header of every frame we give the guest: no checksum or
/// segmentation work left, one buffer.
const RX_HEADER: [u8; HEADER_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
/// The token of the backend's socket on the device's poller.
const BACKEND: u64 = FIRST_DEVICE_TOKEN;
/// ICMP refusals waiting for RX buffers; more are dropped (a guest that
/// floods refused destinations does not grow our memory).
const MAX_REPLIES: usize = 64;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    poller: Poller,
    /// What the backend's socket is registered for now: (in, out); `None`
    /// when it is not registered.
    watched: Option<(bool, bool)>,
}

/// A virtio-net device. Without a backend its link leads nowhere: frames
/// from the guest are dropped and none arrive (a restored VM whose
/// snapshot had a network, started without one).
pub struct Net {
    mac: [u8; 6],
    backend: Option<Backend>,
    filter: EgressFilter,
    active: Option<Active>,
    replies: VecDeque<Vec<u8>>,
    /// Scratch buffer for the frame being read off the TX queue.
    frame: Vec<u8>,
    /// The TX queue was left unread because the backend was full.
    tx_stalled: bool,
}

impl Net {
    /// A device with MAC address `mac`, its link to `backend` (`None`:
    /// nowhere), frames from the guest checked by `filter`.
    pub fn new(mac: [u8; 6], backend: Option<Backend>, filter: EgressFilter) -> Net {
        Net {
            mac,
            backend,
            filter,
            active: None,
            replies: VecDeque::new(),
            frame: Vec::new(),
            tx_stalled: false,
        }
    }

    /// Runs `step`, and breaks the device if the driver broke a queue.
    fn serve(&mut self, step: impl FnOnce(&mut Net) -> Result<(), (usize, QueueError)>) {
        if self.active.as_ref().is_none_or(|a| a.interrupt.is_broken()) {
            return;
        }
        if let Err((queue, e)) = step(self) {
            if let Some(a) = &self.active {
                report_broken(&a.interrupt, "net", queue, &e);
            }
        }
        self.update_interest();
    }

    /// Reads the guest's frames while the backend takes them.
    fn process_tx(&mut self) -> Result<(), (usize, QueueError)> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let mem = &a.mem;
        let (backend, filter, replies, frame) = (
            &mut self.backend,
            &self.filter,
            &mut self.replies,
            &mut self.frame,
        );
        let room = |b: &Option<Backend>| match b {
            Some(b) if !b.is_closed() => b.accepts_frames(),
            // A link that leads nowhere drops everything at once.
            _ => true,
        };
        let more = Cell::new(room(backend));
        let taken = drain(
            &mut a.queues[TX],
            mem,
            &a.interrupt,
            || more.get(),
            |chain| {
                if let Some(f) = read_tx_frame(mem, chain, frame) {
                    match filter.check(f) {
                        Verdict::Pass => {
                            if let Some(b) = backend.as_mut() {
                                b.send(f);
                            }
                        }
                        Verdict::Refuse(reply) if replies.len() < MAX_REPLIES => {
                            replies.push_back(reply)
                        }
                        Verdict::Refuse(_) | Verdict::Drop => {}
                    }
                }
                more.set(room(backend));
                0
            },
        );
        self.tx_stalled = !more.get();
        taken.map_err(|e| (TX, e))
    }

    /// Whether a frame for the guest is ready: a refusal, or a frame the
    /// backend has read (reading more if need be).
    fn next_rx_ready(replies: &VecDeque<Vec<u8>>, backend: &mut Option<Backend>) -> bool {
        if !replies.is_empty() {
            return true;
        }
        match backend {
            Some(b) => b.frame().is_some() || b.receive() == Received::Frame,
            None => false,
        }
    }

    /// Gives the guest the frames that are ready, while it has buffers.
    fn process_rx(&mut self) -> Result<(), (usize, QueueError)> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let mem = &a.mem;
        let (backend, replies) = (&mut self.backend, &mut self.replies);
        let ready = Cell::new(Net::next_rx_ready(replies, backend));
        let given = drain(
            &mut a.queues[RX],
            mem,
            &a.interrupt,
            || ready.get(),
            |chain| {
                let written = if let Some(reply) = replies.pop_front() {
                    write_rx_frame(mem, chain, &reply)
                } else if let Some(b) = backend.as_mut() {
                    let written = b.frame().map_or(0, |f| write_rx_frame(mem, chain, f));
                    b.consume_frame();
                    written
                } else {
                    0
                };
                ready.set(Net::next_rx_ready(replies, backend));
                written
            },
        );
        given.map_err(|e| (RX, e))
    }

    /// Registers the backend's socket for what the device waits on now:
    /// input only while no frame waits for RX buffers (the socket is then
    /// left unread), output only while bytes wait to be written.
    fn update_interest(&mut self) {
        let (Some(a), Some(b)) = (&mut self.active, &self.backend) else {
            return;
        };
        let want = (!b.is_closed()).then(|| (b.frame().is_none(), b.pending_output() > 0));
        if want == a.watched {
            return;
        }
        let events = |(input, output): (bool, bool)| {
            let mut e = EventSet::empty();
            if input {
                e |= EventSet::IN;
            }
            if output {
                e |= EventSet::OUT;
            }
            e
        };
        let result = match (a.watched, want) {
            (None, Some(w)) => a.poller.add(b.fd(), events(w), BACKEND),
            (Some(_), Some(w)) => a.poller.modify(b.fd(), events(w), BACKEND),
            (Some(_), None) => a.poller.remove(b.fd()),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => a.watched = want,
            Err(e) => crate::limited!(warn, "virtio-net: watching the backend's socket: {e}"),
        }
    }

    /// Moves frames both ways as far as both ends take them.
    fn exchange(&mut self) -> Result<(), (usize, QueueError)> {
        if let Some(b) = &mut self.backend {
            b.flush();
        }
        if self.tx_stalled {
            self.process_tx()?;
        }
        self.process_rx()
    }
}

/// The frame in a TX chain (after its header), in `buf`; `None` for a
/// chain that is unreadable, shorter than a header or longer than a frame.
fn read_tx_frame<'b>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &'b mut Vec<u8>,
) -> Option<&'b [u8]> {
    let mut reader = Reader::<()>::new(mem, chain).ok()?;
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).ok()?;
    let len = reader.available_bytes();
    if len > MAX_FRAME {
        crate::limited!(debug, "virtio-net tx: a {len}-byte frame dropped");
        return None;
    }
    buf.resize(len, 0);
    reader.read_exact(buf).ok()?;
    Some(buf)
}

/// Writes a header and `frame` into an RX chain; returns the bytes written,
/// 0 (the frame dropped) if the chain cannot hold it all.
fn write_rx_frame(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> u32 {
    let Ok(mut writer) = Writer::<()>::new(mem, chain) else {
        return 0;
    };
    if writer.available_bytes() < HEADER_LEN + frame.len() {
        crate::limited!(
            debug,
            "virtio-net rx: a {}-byte frame does not fit the guest's buffer",
            frame.len()
        );
        return 0;
    }
    match writer
        .write_all(&RX_HEADER)
        .and_then(|()| writer.write_all(frame))
    {
        Ok(()) => (HEADER_LEN + frame.len()) as u32,
        Err(_) => 0,
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "net"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        feature(VIRTIO_NET_F_MAC)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data)
    }
    fn activate(&mut self, a: Activation) -> io::Result<()> {
        if a.queues.len() != 2 {
            return Err(io::Error::other("net needs two queues"));
        }
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            interrupt: a.interrupt,
            poller: a.poller,
            watched: None,
        });
        self.update_interest();
        Ok(())
    }
    fn handle_queue(&mut self, index: usize) {
        self.serve(|net| {
            if index == TX {
                net.process_tx()?;
            }
            net.exchange()
        });
    }
    fn handle_fd(&mut self, token: u64, _events: EventSet) {
        if token == BACKEND {
            self.serve(Net::exchange);
        }
    }
    fn save(&self) -> DeviceState {
        DeviceState::Net(Persist::save(self))
    }
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let DeviceState::Net(state) = state else {
            return Err(DeviceRestoreError::wrong_kind(self.name(), state));
        };
        let Ok(()) = Persist::restore(self, state);
        Ok(())
    }
    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(QueueState::from))
            .collect()
    }
    fn after_restore(&mut self) {
        self.serve(|net| {
            net.process_tx()?;
            net.exchange()
        });
    }
}
