//! virtio devices over the MMIO transport (virtio 1.x, "modern" only).
//!
//! Threading: vCPU threads touch a device only through its [`MmioTransport`]
//! registers. Once the driver finishes negotiation the transport hands the
//! queues to the device and starts one event thread per device, which waits
//! (epoll) on the queues' ioeventfds and on any host fds the device adds, and
//! signals the guest through an irqfd. No thread ever polls.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
mod queue;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;

pub use mmio::MmioTransport;
pub use persist::{DeviceRestoreError, DeviceState, Persist, QueueState, TransportState};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A feature bit number (as virtio-bindings gives them) as a mask of the
/// 64-bit feature word.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Virtio 1.x, the only dialect we speak: offered by every device.
pub const FEATURE_VERSION_1: u64 = feature(VIRTIO_F_VERSION_1);

/// The device's interrupt line: a status word the driver reads and acks
/// through the transport, and the irqfd that raises the IOAPIC pin.
///
/// It also carries the device's one piece of health: whether the driver
/// broke it (see `queue`), which the transport shows the driver as
/// DEVICE_NEEDS_RESET.
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: EventFd,
    broken: AtomicBool,
}

impl Interrupt {
    /// A line with nothing pending and the device not broken; it raises the
    /// guest interrupt by writing to `irqfd` (registered with KVM for the
    /// device's IOAPIC pin).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd,
            broken: AtomicBool::new(false),
        }
    }

    /// Marks the device broken and tells the driver (a configuration-change
    /// interrupt; it then reads DEVICE_NEEDS_RESET in the status). Returns
    /// whether this call broke it (false if it already was).
    pub fn mark_broken(&self) -> bool {
        let first = !self.broken.swap(true, Ordering::SeqCst);
        if first {
            self.status
                .fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
            if let Err(e) = self.irqfd.write(1) {
                crate::limited!(warn, "virtio irqfd write failed: {e}");
            }
        }
        first
    }

    /// Whether the driver broke the device: it serves no queue then.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Puts back "broken" as a snapshot saved it (no interrupt: the saved
    /// status has it already) or clears it on a driver reset.
    fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            crate::limited!(warn, "virtio irqfd write failed: {e}");
        }
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts back a saved status and, if anything was pending, raises the
    /// line again: an interrupt in flight when the machine was paused may
    /// not have reached the saved interrupt controller state. A spurious
    /// one is harmless (the driver finds nothing new and returns).
    fn restore(&self, status: u32) {
        self.status.fetch_or(status, Ordering::SeqCst);
        if status != 0 {
            if let Err(e) = self.irqfd.write(1) {
                crate::limited!(warn, "virtio irqfd write failed: {e}");
            }
        }
    }
}

/// Tokens below this value are queue indexes; devices use the rest for
/// their own fds.
pub const FIRST_DEVICE_TOKEN: u64 = 64;

/// Lets an active device watch host fds on its event thread.
#[derive(Clone)]
pub struct Poller(Arc<Epoll>);

impl Poller {
    /// A poller of its own; a device gets the one its transport's event
    /// thread waits on (see [`Activation`]).
    pub fn new() -> io::Result<Poller> {
        Ok(Poller(Arc::new(Epoll::new()?)))
    }
    /// Watches `fd` for `events`; readiness arrives as
    /// [`VirtioDevice::handle_fd`] with `token`, which must be at least
    /// [`FIRST_DEVICE_TOKEN`]. The fd must stay open until removed.
    pub fn add(&self, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }
    /// Changes what a watched `fd` is watched for (and its token).
    pub fn modify(&self, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }
    /// Stops watching `fd`; do it before closing the fd.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
    /// The registered fds that are ready now (token, events), without
    /// waiting: tests stand in for the event thread with it.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn ready_now(&self) -> Vec<(u64, EventSet)> {
        let mut events = vec![EpollEvent::default(); 64];
        let n = self.0.wait(0, &mut events).unwrap_or(0);
        events[..n]
            .iter()
            .map(|e| (e.data(), e.event_set()))
            .collect()
    }
}

/// What a device receives when the driver has set it up.
pub struct Activation {
    /// Guest memory, where the queues and their buffers live.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver set them up, one per
    /// [`queue_max_sizes`](VirtioDevice::queue_max_sizes) entry; from now on
    /// the device's copies are the ones that advance.
    pub queues: Vec<Queue>,
    /// The device's interrupt line, to signal used buffers (or mark the device
    /// broken).
    pub interrupt: Arc<Interrupt>,
    /// The event thread's epoll set, for host fds the device wants to wait on.
    pub poller: Poller,
    /// The feature bits the driver accepted: a subset of what was offered,
    /// which is the device's [`features`](VirtioDevice::features) plus
    /// [`FEATURE_VERSION_1`].
    pub acked_features: u64,
}

/// A virtio device model behind an [`MmioTransport`]: the transport keeps
/// the registers and queue setup, the device the queues' work once active.
/// Every method is called with the device locked, from a vCPU thread
/// (config reads), the device's event thread (queues, fds) or the VMM
/// (snapshot and restore, while the vCPUs are paused).
pub trait VirtioDevice: Send + 'static {
    /// Short name for thread names and logs.
    fn name(&self) -> &'static str;
    /// The virtio device id (`virtio_bindings::virtio_ids`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; also how many queues the device has.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver; [`FEATURE_VERSION_1`] is added by the transport.
    fn features(&self) -> u64;
    /// The guest reads the device's configuration space at `offset` (see
    /// [`read_config_bytes`]). The config space is read-only: writes are
    /// dropped by the transport.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK: take the queues and start serving them. An
    /// error leaves the device inactive and the driver sees
    /// DEVICE_NEEDS_RESET. Called again on a restore, with the saved queues.
    fn activate(&mut self, activation: Activation) -> io::Result<()>;
    /// The driver kicked queue `index`.
    fn handle_queue(&mut self, index: usize);
    /// A host fd the device registered through its [`Poller`] is ready.
    fn handle_fd(&mut self, _token: u64, _events: EventSet) {}
    /// The device's own state, for a snapshot ([`Persist::save`], tagged).
    fn save(&self) -> DeviceState;
    /// The queues the device runs on once active (their progress lives here,
    /// not in the transport's copies).
    fn active_queues(&self) -> Vec<QueueState>;
    /// Puts this freshly built device into a saved state, if it can stand
    /// in for the one that saved it (same kind, same disk size, …)
    /// ([`Persist::restore`], after checking the kind).
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError>;
    /// Runs once a restored device is active again, before the vCPUs do.
    /// The default handles every queue as if kicked: a kick that reached
    /// the device just before the pause may not have been served.
    fn after_restore(&mut self) {
        for index in 0..self.queue_max_sizes().len() {
            self.handle_queue(index);
        }
    }
}

/// Copies `data` out of a little-endian config space image at `offset`;
/// reads past the end return zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = config.get(offset as usize + i).copied().unwrap_or(0);
    }
}
