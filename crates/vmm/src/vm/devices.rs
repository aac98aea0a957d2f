//! The parts a cold boot and a restore assemble alike: the KVM VM object,
//! the legacy ports, and the virtio-mmio devices. (Guest memory is
//! `crate::memory`.)

use super::{io, kvm_call, DiskConfig, NetConfig, SnapshotError, VmError, VsockConfig};
use crate::arch::x86_64::layout::*;
use crate::bus::{lock, Bus};
use crate::capped_log::CappedLog;
use crate::devices::legacy::{self, ResetReporter};
use crate::devices::serial::SerialState;
use crate::devices::serial::{ConsoleSink, IrqTrigger, SerialDevice};
use crate::devices::virtio::{self, mmio::REG_QUEUE_NOTIFY, MmioTransport, VirtioDevice};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use supermachine_protocol::fs_spec::FsSpec;
use vm_memory::GuestMemoryMmap;
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

/// Where the console goes.
pub(super) struct ConsoleConfig {
    /// From [`open_serial_log`].
    pub serial_log: Option<File>,
    /// What the serial log may grow to (see `capped_log`).
    pub serial_log_cap: u64,
    pub echo: bool,
}

/// Opens a VM's serial log for appending: a restored VM may share its log
/// with nothing, but a log must never lose what an earlier run wrote.
pub(super) fn open_serial_log(path: &Path) -> Result<File, VmError> {
    io(
        format!("opening serial log {}", path.display()),
        crate::files::open_log(path),
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
    let log = console
        .serial_log
        .map(|file| CappedLog::new(file, console.serial_log_cap))
        .transpose();
    let log = io("serial log", log)?;
    let sink = ConsoleSink::new(log, console.echo, reset.panicked.clone());
    let serial = match saved_serial {
        Some(state) => {
            SerialDevice::restore(state, IrqTrigger(irq), sink).map_err(SnapshotError::from)?
        }
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

/// The virtio devices in MMIO slot order: disks, then vsock, then rng,
/// then the shared directories, then the network (devices added later
/// come last, so a VM without them keeps the slots its snapshots were
/// taken with).
pub(super) fn virtio_devices(
    disks: &[DiskConfig],
    vsock: Option<&VsockConfig>,
    rng: bool,
    fs: &[FsSpec],
    net: Option<&NetConfig>,
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
    for spec in fs {
        let dir = io(
            format!("sharing {} as {}", spec.path.display(), spec.tag),
            virtio::fs::SharedDir::open(&spec.path, spec.symlinks, spec.read_only),
        )?;
        let dev =
            virtio::fs::Fs::new(&spec.tag, dir).map_err(|e| VmError::Config(e.to_string()))?;
        devices.push(Arc::new(Mutex::new(dev)));
    }
    if let Some(net) = net {
        devices.push(Arc::new(Mutex::new(network_device(net)?)));
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

/// The guest's network card, its link to a passt of its own (or to
/// nowhere).
fn network_device(net: &NetConfig) -> Result<virtio::net::Net, VmError> {
    use supermachine_protocol::net_spec::{NetSpec, GUEST_MAC};
    use virtio::net::{filter, Backend, EgressFilter};
    let Some(egress) = &net.egress else {
        let nothing = EgressFilter::new(NetSpec::Allow(Vec::new()), Vec::new());
        return Ok(virtio::net::Net::new(GUEST_MAC, None, nothing));
    };
    let host = io(
        "listing the host's addresses",
        filter::host_ipv4_addresses(),
    )?;
    let backend = io(
        "starting the guest's network stack (passt)",
        Backend::spawn_passt(&net.passt, net.log.as_deref()),
    )?;
    let filter = EgressFilter::new(egress.clone(), host);
    Ok(virtio::net::Net::new(GUEST_MAC, Some(backend), filter))
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
