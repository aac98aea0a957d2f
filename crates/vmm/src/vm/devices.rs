//! The parts a cold boot and a restore assemble alike: the KVM VM object,
//! guest memory registered with it, the legacy ports, and the virtio-mmio
//! devices.

use super::{io, kvm_call, DiskConfig, VmError, VsockConfig};
use crate::arch::x86_64::layout::*;
use crate::bus::{lock, Bus};
use crate::devices::legacy::{self, ResetReporter};
use crate::devices::serial::SerialState;
use crate::devices::serial::{ConsoleSink, IrqTrigger, SerialDevice};
use crate::devices::virtio::{self, mmio::REG_QUEUE_NOTIFY, MmioTransport, VirtioDevice};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

pub(super) fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| VmError::Kvm(explain_kvm_open(e)))
}

fn explain_kvm_open(e: kvm_ioctls::Error) -> String {
    match e.errno() {
        libc::ENOENT => "not found: this host has no KVM (enable hardware virtualization, or load kvm-intel/kvm-amd)".into(),
        libc::EACCES | libc::EPERM => {
            "permission denied: add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again".into()
        }
        _ => format!("cannot open: {e}"),
    }
}

/// A VM with the in-kernel interrupt controllers and PIT every guest of
/// ours expects.
pub(super) fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm_call("KVM_CREATE_VM", kvm.create_vm())?;
    kvm_call(
        "KVM_SET_TSS_ADDR",
        vm.set_tss_address(KVM_TSS_ADDR as usize),
    )?;
    kvm_call("KVM_CREATE_IRQCHIP", vm.create_irq_chip())?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    kvm_call("KVM_CREATE_PIT2", vm.create_pit2(pit))?;
    Ok(vm)
}

/// Fresh, zeroed guest memory of `mib` MiB, registered with the VM.
pub(super) fn create_memory(vm: &VmFd, mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let bytes = mib << 20;
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib,
        reason: e.to_string(),
    })?;
    register_memory(vm, &mem, true)?;
    Ok(mem)
}

/// Hands every region of `mem` to KVM as a memory slot.
pub(super) fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    huge_pages: bool,
) -> Result<(), VmError> {
    let mib = mem.iter().map(|r| r.len()).sum::<u64>() >> 20;
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                reason: e.to_string(),
            })?;
        if huge_pages {
            // Transparent huge pages where the host allows them: one 2 MiB
            // fault instead of 512 small ones, each a VM exit to the host's
            // page-fault path (QEMU does the same). Advice only; failure is
            // fine. (Not for a restored snapshot: its pages come from the
            // page cache, shared copy-on-write.)
            // SAFETY: advising a mapping we own, over exactly its length.
            unsafe { libc::madvise(host_addr.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the Vm
        // keeps until the process ends.
        kvm_call("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region_desc)
        })?;
    }
    Ok(())
}

/// Where the console goes.
pub(super) struct ConsoleConfig {
    /// From [`open_serial_log`].
    pub serial_log: Option<File>,
    pub echo: bool,
}

/// Opens a VM's serial log for appending: a restored VM may share its log
/// with nothing, but a log must never lose what an earlier run wrote.
pub(super) fn open_serial_log(path: &Path) -> Result<File, VmError> {
    io(
        format!("opening serial log {}", path.display()),
        File::options().create(true).append(true).open(path),
    )
}

/// COM1, the i8042 reset port and the power port. The serial port starts
/// fresh, or as saved in a snapshot.
pub(super) fn add_legacy_devices(
    vm: &VmFd,
    pio: &mut Bus,
    console: ConsoleConfig,
    reset: &ResetReporter,
    saved_serial: Option<&SerialState>,
) -> Result<Arc<Mutex<SerialDevice>>, VmError> {
    let irq = io("serial irqfd", EventFd::new(libc::EFD_NONBLOCK))?;
    kvm_call("KVM_IRQFD (serial)", vm.register_irqfd(&irq, SERIAL_IRQ))?;
    let sink = ConsoleSink::new(console.serial_log, console.echo, reset.panicked.clone());
    let serial = match saved_serial {
        Some(state) => SerialDevice::restore(state, IrqTrigger(irq), sink)
            .map_err(|e| VmError::Snapshot(e.to_string()))?,
        None => SerialDevice(Serial::new(IrqTrigger(irq), sink)),
    };
    let serial = Arc::new(Mutex::new(serial));
    let overlap = |e: crate::bus::Overlap| VmError::Config(e.to_string());
    pio.insert(SERIAL_PORT as u64, 8, serial.clone())
        .map_err(overlap)?;
    pio.insert(
        legacy::I8042_PORT,
        1,
        Arc::new(Mutex::new(legacy::I8042 {
            reporter: reset.clone(),
        })),
    )
    .map_err(overlap)?;
    pio.insert(
        legacy::POWER_PORT,
        1,
        Arc::new(Mutex::new(legacy::PowerPort {
            reporter: reset.clone(),
        })),
    )
    .map_err(overlap)?;
    Ok(serial)
}

/// The virtio devices in MMIO slot order: disks, then vsock, then rng.
pub(super) fn virtio_devices(
    disks: &[DiskConfig],
    vsock: Option<&VsockConfig>,
    rng: bool,
) -> Result<Vec<Arc<Mutex<dyn VirtioDevice>>>, VmError> {
    let mut devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let id = format!("disk{i}");
        let blk = io(
            format!("opening disk {}", disk.path.display()),
            virtio::block::Block::open(&disk.path, disk.read_only, &id),
        )?;
        devices.push(Arc::new(Mutex::new(blk)));
    }
    if let Some(v) = vsock {
        if v.guest_cid < 3 || v.guest_cid > u32::MAX as u64 {
            return Err(VmError::Config(format!(
                "vsock CID {}: must be 3..2^32",
                v.guest_cid
            )));
        }
        let dev = io(
            format!("binding vsock socket {}", v.uds_path.display()),
            virtio::vsock::Vsock::new(v.guest_cid, &v.uds_path),
        )?;
        devices.push(Arc::new(Mutex::new(dev)));
    }
    if rng {
        devices.push(Arc::new(Mutex::new(virtio::rng::Rng::default())));
    }
    if devices.len() as u32 > IOAPIC_PINS - VIRTIO_FIRST_IRQ {
        return Err(VmError::Config(format!(
            "{} virtio devices: at most {}",
            devices.len(),
            IOAPIC_PINS - VIRTIO_FIRST_IRQ
        )));
    }
    Ok(devices)
}

/// Where virtio device `index` sits: MMIO base and IRQ.
pub(super) fn virtio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_IRQ + index as u32,
    )
}

/// Wires `device` into MMIO slot `index`: irqfd, one ioeventfd per queue,
/// the transport on the bus.
pub(super) fn add_virtio_device(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    index: usize,
    device: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<Arc<Mutex<MmioTransport>>, VmError> {
    let (base, irq) = virtio_slot(index);
    let irqfd = io("virtio irqfd", EventFd::new(libc::EFD_NONBLOCK))?;
    kvm_call("KVM_IRQFD (virtio)", vm.register_irqfd(&irqfd, irq))?;
    let queues = lock(&device).queue_max_sizes().len();
    let mut evts = Vec::with_capacity(queues);
    for q in 0..queues {
        let evt = io("virtio queue eventfd", EventFd::new(libc::EFD_NONBLOCK))?;
        kvm_call(
            "KVM_IOEVENTFD (virtio queue notify)",
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                q as u32,
            ),
        )?;
        evts.push(evt);
    }
    let transport = io(
        "virtio transport",
        MmioTransport::new(device, mem.clone(), irqfd, evts),
    )?;
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(base, VIRTIO_MMIO_SIZE, transport.clone())
        .map_err(|e| VmError::Config(e.to_string()))?;
    Ok(transport)
}
