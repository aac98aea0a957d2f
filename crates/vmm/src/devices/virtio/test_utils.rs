//! A mock guest driver, for device tests and fuzz targets: virtqueues laid
//! out in guest memory by virtio-queue's `MockSplitQueue`, buffers to hand
//! the device, and what the device put in the used rings. Raw descriptors
//! and ring indexes can be written too, to play a hostile driver.
//!
//! The caller owns the guest memory ([`memory`]) and lends it to the
//! driver: a `MockSplitQueue` borrows it, and zeroes its rings when made,
//! so each queue is made once and kept.
//!
//! The used ring is placed here, not where `MockSplitQueue` (virtio-queue
//! 0.17) puts it: it ends the avail ring after as many bytes as the ring
//! has entries, not after its size in bytes, so its used ring overlaps the
//! upper half of the avail ring's entries (a 256-entry queue breaks once
//! more than 128 chains were made available).
//!
//! Test code: a driver step that cannot be taken panics, which fails the
//! test or fuzz run that asked for it, so `expect` is the right tool here.
#![allow(clippy::expect_used)]

use super::{Activation, Interrupt, Poller};
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// Guest memory of every mock driver.
pub const MEM_SIZE: u64 = 16 << 20;
/// Queue `i` sits at `i * QUEUE_SPACING` (a 256-entry split queue takes
/// under 8 KiB).
const QUEUE_SPACING: u64 = 0x10000;
/// Where in its space a queue's used ring sits (past a 256-entry
/// descriptor table and avail ring).
const USED_RING_OFFSET: u64 = 0x8000;
/// Buffers are handed out from here up.
const DATA_START: u64 = 0x10_0000;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// The device writes it (`VRING_DESC_F_WRITE`); else it reads it.
    pub writable: bool,
}

impl Buf {
    /// A buffer the device reads (the driver's data).
    pub fn read(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: false,
        }
    }
    /// A buffer the device writes (room for its answer).
    pub fn write(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// [`MEM_SIZE`] bytes of zeroed guest memory at address 0.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("mock guest memory")
}

/// The driver side of a device's queues.
pub struct MockDriver<'m> {
    /// The guest memory the queues and buffers live in.
    pub mem: &'m GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    sizes: Vec<u16>,
    /// Next free descriptor of each queue.
    next_desc: Vec<u16>,
    next_data: u64,
}

impl<'m> MockDriver<'m> {
    /// One queue of each size in `mem` (from [`memory`]), ready to activate.
    pub fn new(mem: &'m GuestMemoryMmap, sizes: &[u16]) -> MockDriver<'m> {
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(q, &size)| {
                MockSplitQueue::create(mem, GuestAddress(q as u64 * QUEUE_SPACING), size)
            })
            .collect();
        MockDriver {
            mem,
            queues,
            sizes: sizes.to_vec(),
            next_desc: vec![0; sizes.len()],
            next_data: DATA_START,
        }
    }

    fn mock(&self, queue: usize) -> &MockSplitQueue<'m, GuestMemoryMmap> {
        &self.queues[queue]
    }

    /// What a transport hands the device once the driver set it up, the
    /// interrupt line it signals on, and the poller its host fds go to.
    pub fn activation(&self) -> (Activation, Arc<Interrupt>, Poller) {
        let queues = (0..self.sizes.len())
            .map(|q| {
                let mut queue = self.mock(q).create_queue::<Queue>().expect("mock queue");
                let used = self.used_ring(q);
                queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                queue
            })
            .collect();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(Interrupt::new(irq));
        let poller = Poller::new().expect("epoll");
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            poller: poller.clone(),
            acked_features: 0,
        };
        (activation, interrupt, poller)
    }

    /// `len` bytes of fresh guest memory (16-byte aligned), zeroed.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_data;
        self.next_data = (addr + len as u64).next_multiple_of(16);
        assert!(self.next_data <= MEM_SIZE, "mock guest memory exhausted");
        addr
    }

    /// A fresh buffer holding `bytes`, for the device to read.
    pub fn readable(&mut self, bytes: &[u8]) -> Buf {
        let addr = self.alloc(bytes.len() as u32);
        self.write(addr, bytes);
        Buf::read(addr, bytes.len() as u32)
    }

    /// A fresh buffer of `len` bytes for the device to write.
    pub fn writable(&mut self, len: u32) -> Buf {
        Buf::write(self.alloc(len), len)
    }

    /// Writes `bytes` into guest memory at `addr`; panics outside it.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("write guest memory");
    }

    /// Reads `len` bytes of guest memory at `addr`; panics outside it.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("read guest memory");
        out
    }

    /// Writes descriptor `index` of `queue` as is (no bookkeeping): for
    /// chains no honest driver makes.
    pub fn set_descriptor(
        &self,
        queue: usize,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mock(queue)
            .desc_table()
            .store(index, desc)
            .expect("descriptor index");
    }

    /// Makes the chain starting at descriptor `head` available.
    pub fn publish(&self, queue: usize, head: u16) {
        let mock = self.mock(queue);
        let idx = mock.avail().idx().load();
        let slot = idx % self.sizes[queue];
        mock.avail()
            .ring()
            .ref_at(slot as usize)
            .expect("avail slot")
            .store(head);
        mock.avail().idx().store(idx.wrapping_add(1));
    }

    /// Sets the available index outright (a driver may write anything).
    pub fn set_avail_idx(&self, queue: usize, idx: u16) {
        self.mock(queue).avail().idx().store(idx);
    }

    /// The available index of `queue`: how many chains the driver has made
    /// available (wrapping at 2^16).
    pub fn avail_idx(&self, queue: usize) -> u16 {
        self.mock(queue).avail().idx().load()
    }

    /// Lays `bufs` out as one chain and makes it available; returns its
    /// head descriptor.
    pub fn add_chain(&mut self, queue: usize, bufs: &[Buf]) -> u16 {
        let size = self.sizes[queue];
        let head = self.next_desc[queue];
        for (i, buf) in bufs.iter().enumerate() {
            let index = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            if buf.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            self.set_descriptor(queue, index, buf.addr, buf.len, flags, (index + 1) % size);
        }
        self.next_desc[queue] = (head + bufs.len() as u16) % size;
        self.publish(queue, head);
        head
    }

    fn used_ring(&self, queue: usize) -> u64 {
        queue as u64 * QUEUE_SPACING + USED_RING_OFFSET
    }

    fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le(self.mem.read_obj(GuestAddress(addr)).expect("used ring"))
    }

    /// How many chains the device has put in the used ring of `queue`.
    pub fn used_idx(&self, queue: usize) -> u16 {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used_ring(queue) + 2))
            .expect("used ring");
        u16::from_le(idx)
    }

    /// The used ring of `queue` so far: (head, bytes written) per chain
    /// (`struct virtq_used_elem`: id and len, 32 bits each).
    pub fn used(&self, queue: usize) -> Vec<(u16, u32)> {
        let ring = self.used_ring(queue) + 4;
        (0..self.used_idx(queue))
            .map(|i| {
                let elem = ring + u64::from(i % self.sizes[queue]) * 8;
                (self.read_u32(elem) as u16, self.read_u32(elem + 4))
            })
            .collect()
    }
}

pub use crate::test_support::within_a_minute;
