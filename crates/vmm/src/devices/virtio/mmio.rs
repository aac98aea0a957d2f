//! The virtio-mmio register window (virtio 1.2 §4.2.2), version 2 only.

use super::persist::{QueueState, TransportRestoreError, TransportState};
use super::{Activation, Interrupt, Poller, VirtioDevice, FEATURE_VERSION_1};
use crate::bus::{lock, BusDevice};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian, the value every virtio-mmio device answers
/// at `MagicValue`.
const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout; version 1 is the legacy one.
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4d48_4353; // "SCHM"

/// Where the `QueueNotify` register sits in a device's window, for the
/// ioeventfds that catch writes to it before they reach us.
pub const REG_QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// One virtio device's 4 KiB register window on the MMIO bus: feature
/// negotiation, queue setup and the interrupt status, as the guest driver
/// sees them. On DRIVER_OK it activates the device and starts its event
/// thread (named `virtio-<name>`); an active device cannot be reset.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    name: &'static str,
    device_type: u32,
    offered_features: u64,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// Set by [`Self::restore`] for [`Self::resume_after_restore`].
    restored_active: bool,
    restored_interrupt: u32,
}

impl MmioTransport {
    /// `queue_evts` must already be registered as ioeventfds on this
    /// device's `QueueNotify` register (one per queue, datamatch = index).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
        queue_evts: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let (name, device_type, offered_features, sizes) = {
            let d = lock(&device);
            (
                d.name(),
                d.device_type(),
                d.features() | FEATURE_VERSION_1,
                d.queue_max_sizes().to_vec(),
            )
        };
        let queues = sizes
            .iter()
            .map(|&s| {
                Queue::new(s).map_err(|e| std::io::Error::other(format!("queue size {s}: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            name,
            device_type,
            offered_features,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            queue_evts,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            restored_active: false,
            restored_interrupt: 0,
        })
    }

    /// Registers, queues and device state, for a snapshot.
    pub fn save(&self) -> TransportState {
        let device = self.device.clone();
        let guard = lock(&device);
        self.save_with(&*guard)
    }

    /// The device behind the registers: a snapshot holds its lock while it
    /// copies guest memory, so the device's thread cannot change it.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// [`Self::save`] with the device already locked by the caller.
    pub fn save_with(&self, device: &dyn VirtioDevice) -> TransportState {
        let queues = if self.activated {
            device.active_queues()
        } else {
            self.queues.iter().map(QueueState::from).collect()
        };
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            status: self.status(),
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues,
            device: device.save(),
        }
    }

    /// Puts a freshly built transport into the saved state. The device
    /// comes back to life only in [`Self::resume_after_restore`], once the
    /// interrupt controllers and vCPUs are restored too.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), TransportRestoreError> {
        lock(&self.device).restore(&state.device)?;
        if state.queues.len() != self.queues.len() {
            return Err(TransportRestoreError::QueueCount {
                device: self.name,
                saved: state.queues.len(),
                actual: self.queues.len(),
            });
        }
        self.queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                q.to_queue().map_err(|source| TransportRestoreError::Queue {
                    device: self.name,
                    index,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features & self.offered_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        // A device that stopped serving a broken driver stays stopped.
        self.interrupt
            .set_broken(state.activated && state.status & STATUS_NEEDS_RESET != 0);
        self.restored_active = state.activated;
        self.restored_interrupt = state.interrupt_status;
        Ok(())
    }

    /// Activates a device that was active when snapshotted and lets it
    /// catch up on anything the pause interrupted.
    pub fn resume_after_restore(&mut self) -> std::io::Result<()> {
        // The saved status first: what the device signals from here on
        // (a vsock transport reset, say) must add to it, not be
        // overwritten by it, or the driver reads "nothing for me" and
        // leaves the news in the queue until some later interrupt.
        self.interrupt
            .restore(std::mem::take(&mut self.restored_interrupt));
        if std::mem::take(&mut self.restored_active) {
            self.activate()?;
            lock(&self.device).after_restore();
        }
        Ok(())
    }

    /// The `Status` register: what the driver wrote, plus NEEDS_RESET
    /// once the device is broken.
    fn status(&self) -> u32 {
        if self.interrupt.is_broken() {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.status = value;
        if value & STATUS_FEATURES_OK != 0 && self.acked_features & FEATURE_VERSION_1 == 0 {
            // A legacy-only driver: we do not speak that dialect.
            self.status &= !STATUS_FEATURES_OK;
        }
        if value & STATUS_DRIVER_OK != 0 && !self.activated {
            if let Err(e) = self.activate() {
                // The driver may reset and try again, as often as it likes.
                crate::limited!(error, "virtio-{}: activation failed: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            // The event thread owns the device's queues now; a live reset
            // would need it to hand them back. Linux only resets a live
            // device on driver unbind, which our guests do not do.
            crate::limited!(
                warn,
                "virtio-{}: reset of an active device ignored",
                self.name
            );
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        self.status = 0;
        self.interrupt.set_broken(false);
        self.acked_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn activate(&mut self) -> std::io::Result<()> {
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            return Err(std::io::Error::other(format!("queue {i} is not valid")));
        }
        let epoll = Arc::new(Epoll::new()?);
        let mut evts = Vec::with_capacity(self.queue_evts.len());
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let evt = evt.try_clone()?;
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
            evts.push(evt);
        }
        // The device gets its own copies; ours keep answering register reads.
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| std::io::Error::other(format!("queue setup: {e:?}")))?;
        lock(&self.device).activate(Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            poller: Poller(epoll.clone()),
            acked_features: self.acked_features,
        })?;
        let device = self.device.clone();
        std::thread::Builder::new()
            .name(format!("virtio-{}", self.name))
            .spawn(move || event_loop(device, epoll, evts))?;
        self.activated = true;
        Ok(())
    }
}

use std::os::fd::AsRawFd;

fn event_loop(device: Arc<Mutex<dyn VirtioDevice>>, epoll: Arc<Epoll>, queue_evts: Vec<EventFd>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio event loop: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if let Some(evt) = queue_evts.get(token as usize) {
                // Drain the counter; one pass handles every kick so far.
                let _ = evt.read();
                lock(&device).handle_queue(token as usize);
            } else {
                lock(&device).handle_fd(token, ev.event_set());
            }
        }
    }
}

fn read_u32(data: &mut [u8], value: u32) {
    let bytes = value.to_le_bytes();
    let n = data.len().min(4);
    data[..n].copy_from_slice(&bytes[..n]);
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        // Below CONFIG_SPACE, so it fits.
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size() as u32),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready() as u32),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions: length reads as "absent" (all ones).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        };
        read_u32(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            return; // our devices have read-only config
        }
        if data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        // Queue layout may only change before the device goes live.
        let configurable = !self.activated;
        // Below CONFIG_SPACE, so it fits.
        let reg = offset as u32;
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let accepted = ((v as u64) << shift) & self.offered_features;
                self.acked_features = (self.acked_features & !mask) | accepted;
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if configurable => {
                let name = self.name;
                if let Some(q) = self.selected_queue() {
                    if q.try_set_size(v as u16).is_err() {
                        crate::limited!(debug, "virtio-{name}: queue size {v} refused");
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if configurable =>
            {
                let name = self.name;
                if let Some(q) = self.selected_queue() {
                    // Each address is a LOW register and the HIGH one 4 bytes on.
                    let with_half = |addr: u64| {
                        GuestAddress(if reg & 4 == 0 {
                            (addr & !0xffff_ffff) | u64::from(v)
                        } else {
                            (addr & 0xffff_ffff) | (u64::from(v) << 32)
                        })
                    };
                    let set = match reg & !4 {
                        VIRTIO_MMIO_QUEUE_DESC_LOW => {
                            q.try_set_desc_table_address(with_half(q.desc_table()))
                        }
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                            q.try_set_avail_ring_address(with_half(q.avail_ring()))
                        }
                        _ => q.try_set_used_ring_address(with_half(q.used_ring())),
                    };
                    if set.is_err() {
                        crate::limited!(debug, "virtio-{name}: misaligned queue address refused");
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; forward if it reaches us.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::persist::DeviceState;
    use crate::devices::virtio::rng::RngState;
    use vm_memory::GuestAddress;

    fn write(t: &mut MmioTransport, reg: u32, v: u32) {
        t.write(reg.into(), &v.to_le_bytes());
    }

    fn read(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(reg.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn transport() -> MmioTransport {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let device: Arc<Mutex<dyn VirtioDevice>> =
            Arc::new(Mutex::new(super::super::rng::Rng::default()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let evts = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        MmioTransport::new(device, mem, irq, evts).unwrap()
    }

    #[test]
    fn identifies_as_a_modern_virtio_device() {
        let mut t = transport();
        assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_DEVICE_ID),
            virtio_bindings::virtio_ids::VIRTIO_ID_RNG
        );
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES) & 1,
            1,
            "VIRTIO_F_VERSION_1 offered"
        );
    }

    #[test]
    fn save_captures_negotiation_and_queue_setup() {
        let mut t = transport();
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        let s = t.save();
        assert_eq!(s.acked_features, FEATURE_VERSION_1);
        assert_eq!(s.status, 1 | 2 | STATUS_FEATURES_OK);
        assert!(!s.activated);
        assert_eq!(s.device, DeviceState::Rng(RngState));
        let q = &s.queues[0];
        assert_eq!(
            (q.size, q.ready, q.desc_table, q.avail_ring, q.used_ring),
            (64, true, 0x1000, 0x2000, 0x3000)
        );
    }

    #[test]
    fn a_driver_without_version_1_cannot_finish_negotiation() {
        let mut t = transport();
        write(&mut t, VIRTIO_MMIO_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn a_broken_device_shows_needs_reset_until_the_driver_resets_it() {
        let mut t = transport();
        write(&mut t, VIRTIO_MMIO_STATUS, 1 | 2);
        assert!(t.interrupt.mark_broken());
        assert!(!t.interrupt.mark_broken(), "broken once");
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 1 | 2 | STATUS_NEEDS_RESET);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            0
        );
        assert_ne!(t.save().status & STATUS_NEEDS_RESET, 0);
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert!(!t.interrupt.is_broken());
    }

    #[test]
    fn a_device_saved_broken_is_restored_broken() {
        let mut saved = transport().save();
        saved.activated = true;
        saved.status = 1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_NEEDS_RESET;
        let mut t = transport();
        t.restore(&saved).unwrap();
        assert!(t.interrupt.is_broken());
        saved.status &= !STATUS_NEEDS_RESET;
        let mut t = transport();
        t.restore(&saved).unwrap();
        assert!(!t.interrupt.is_broken());
    }

    #[test]
    fn queue_addresses_take_both_halves_and_refuse_misalignment() {
        let mut t = transport();
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
        write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        // The avail ring must be 2-byte aligned: refused, the old one kept.
        write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x3001);
        let q = &t.save().queues[0];
        assert_eq!((q.desc_table, q.avail_ring), (0x1_0000_1000, 0x2000));
    }

    /// Counts the lines written to it.
    #[derive(Clone, Default)]
    struct LineCounter(Arc<std::sync::atomic::AtomicUsize>);

    impl std::io::Write for LineCounter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            self.0.fetch_add(lines, std::sync::atomic::Ordering::SeqCst);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_driver_failing_activation_over_and_over_logs_a_few_lines_not_one_each() {
        let lines = LineCounter::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut t = transport();
            for _ in 0..1000 {
                // A ready queue whose rings lie outside guest memory.
                write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
                write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
                write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
                write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
                write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
                write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
                write(
                    &mut t,
                    VIRTIO_MMIO_STATUS,
                    1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                );
                assert_ne!(read(&mut t, VIRTIO_MMIO_STATUS) & STATUS_NEEDS_RESET, 0);
                write(&mut t, VIRTIO_MMIO_STATUS, 0);
            }
        });
        let written = lines.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=crate::log_limit::BURST as usize).contains(&written),
            "{written} lines"
        );
    }
}
