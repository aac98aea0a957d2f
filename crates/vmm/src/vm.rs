//! Assembles a virtual machine from a [`VmConfig`]: KVM objects, guest
//! memory, devices, kernel, vCPUs; then runs it until it ends.

use crate::arch::x86_64::{self as arch, layout::*};
use crate::bus::Bus;
use crate::devices::legacy::{self, ResetReporter};
use crate::devices::serial::{ConsoleSink, IrqTrigger, SerialDevice};
use crate::devices::virtio::{self, mmio::REG_QUEUE_NOTIFY, MmioTransport, VirtioDevice};
use crate::outcome::{self, ExitSender, Outcome};
use crate::vcpu::VcpuRunner;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

/// Kernel arguments every guest gets. `reboot=k` makes reboots reach our
/// i8042 port; `panic=-1` turns a panic into an immediate reset we report.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet";
/// After the kernel prints its panic banner, how long to wait for it to reset
/// the machine before we call it a panic ourselves (for `panic=0` guests).
const PANIC_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Host muxer socket; guest-initiated streams go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the base command line.
    pub extra_cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// In order: the first is /dev/vda.
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    pub rng: bool,
    pub serial_log: Option<PathBuf>,
    /// Also copy the console to our stderr.
    pub console_echo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm: {0}")]
    Kvm(String),
    #[error("{what}: {source}")]
    KvmCall {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {mib} MiB: {reason}")]
    Memory { mib: u64, reason: String },
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn kvm_call<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|source| VmError::KvmCall { what, source })
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, VmError> {
    r.map_err(|source| VmError::Io {
        what: what.into(),
        source,
    })
}

/// A built machine, ready to run.
pub struct Vm {
    // Held so the VM and its memory mappings live as long as the vCPUs.
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    vcpus: Vec<VcpuRunner>,
    exit: ExitSender,
    exit_rx: Receiver<Outcome>,
    panicked: Arc<AtomicBool>,
}

impl Vm {
    pub fn build(config: &VmConfig) -> Result<Vm, VmError> {
        if config.vcpus == 0 || config.vcpus as u32 > 64 {
            return Err(VmError::Config(format!(
                "{} vCPUs: choose 1 to 64",
                config.vcpus
            )));
        }
        if config.memory_mib < 64 {
            return Err(VmError::Config(format!(
                "{} MiB of memory: at least 64 MiB is needed",
                config.memory_mib
            )));
        }
        let kvm = Kvm::new().map_err(|e| VmError::Kvm(explain_kvm_open(e)))?;
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

        let mem = create_memory(&vm, config.memory_mib)?;
        let (exit, exit_rx) = outcome::channel();
        let panicked = Arc::new(AtomicBool::new(false));
        let reset = ResetReporter {
            exit: exit.clone(),
            panicked: panicked.clone(),
        };

        let mut pio = Bus::default();
        let mut mmio = Bus::default();
        add_legacy_devices(&vm, &mut pio, config, &reset)?;

        let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| VmError::Config(e.to_string()))?;
        cmdline
            .insert_str(BASE_CMDLINE)
            .map_err(|e| VmError::Config(e.to_string()))?;
        for (index, device) in virtio_devices(config)?.into_iter().enumerate() {
            add_virtio_device(&vm, &mem, &mut mmio, &mut cmdline, index, device)?;
        }
        if !config.extra_cmdline.trim().is_empty() {
            cmdline
                .insert_str(config.extra_cmdline.trim())
                .map_err(|e| VmError::Config(format!("kernel command line: {e}")))?;
        }

        let kernel = arch::boot::load(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
        arch::regs::write_boot_tables(&mem)
            .map_err(|e| VmError::Config(format!("boot tables: {e}")))?;
        let mptable = arch::mptable::build(config.vcpus);
        mem.write_slice(&mptable, GuestAddress(MPTABLE_ADDR))
            .map_err(|e| VmError::Config(format!("MP table: {e}")))?;

        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        let supported = kvm_call(
            "KVM_GET_SUPPORTED_CPUID",
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        for id in 0..config.vcpus {
            let fd = kvm_call("KVM_CREATE_VCPU", vm.create_vcpu(id as u64))?;
            let mut cpuid = supported.clone();
            arch::cpuid::for_vcpu(&mut cpuid, id, config.vcpus, tsc_deadline);
            kvm_call("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
            let msrs =
                arch::msrs::boot_msrs().map_err(|e| VmError::Config(format!("MSR list: {e:?}")))?;
            kvm_call("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
            let mut lapic = kvm_call("KVM_GET_LAPIC", fd.get_lapic())?;
            arch::configure_lint(&mut lapic);
            kvm_call("KVM_SET_LAPIC", fd.set_lapic(&lapic))?;
            kvm_call("KVM_SET_FPU", fd.set_fpu(&arch::regs::boot_fpu()))?;
            if id == 0 {
                let sregs = kvm_call("KVM_GET_SREGS", fd.get_sregs())?;
                kvm_call(
                    "KVM_SET_SREGS",
                    fd.set_sregs(&arch::regs::long_mode_sregs(sregs)),
                )?;
                kvm_call(
                    "KVM_SET_REGS",
                    fd.set_regs(&arch::regs::boot_regs(kernel.entry)),
                )?;
            }
            vcpus.push(VcpuRunner {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                reset: reset.clone(),
            });
        }
        Ok(Vm {
            _vm: vm,
            _mem: mem,
            vcpus,
            exit,
            exit_rx,
            panicked,
        })
    }

    /// A handle that ends the VM with the given outcome (e.g. on SIGTERM).
    pub fn exit_sender(&self) -> ExitSender {
        self.exit.clone()
    }

    /// Starts the vCPUs and blocks until the machine ends.
    pub fn run(self) -> Result<Outcome, VmError> {
        for vcpu in self.vcpus {
            let name = format!("vcpu{}", vcpu.id);
            io(
                "starting a vCPU thread",
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || vcpu.run()),
            )?;
        }
        let mut panic_seen_for = Duration::ZERO;
        let tick = Duration::from_millis(250);
        loop {
            match self.exit_rx.recv_timeout(tick) {
                Ok(outcome) => return Ok(outcome),
                Err(RecvTimeoutError::Timeout) => {
                    if self.panicked.load(Ordering::SeqCst) {
                        panic_seen_for += tick;
                        if panic_seen_for >= PANIC_GRACE {
                            return Ok(Outcome::Panic);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Outcome::Crash(
                        "every vCPU stopped without an outcome".into(),
                    ));
                }
            }
        }
    }
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

fn create_memory(vm: &VmFd, mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let bytes = mib << 20;
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib,
        reason: e.to_string(),
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                reason: e.to_string(),
            })?;
        // Transparent huge pages where the host allows them: one 2 MiB
        // fault instead of 512 small ones, each a VM exit to the host's
        // page-fault path (QEMU does the same). Advice only; failure is fine.
        // SAFETY: advising a mapping we own, over exactly its length.
        unsafe { libc::madvise(host_addr.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM (it is kept by the devices and never unmapped before exit).
        kvm_call("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region_desc)
        })?;
    }
    Ok(mem)
}

fn add_legacy_devices(
    vm: &VmFd,
    pio: &mut Bus,
    config: &VmConfig,
    reset: &ResetReporter,
) -> Result<(), VmError> {
    let irq = io("serial irqfd", EventFd::new(libc::EFD_NONBLOCK))?;
    kvm_call("KVM_IRQFD (serial)", vm.register_irqfd(&irq, SERIAL_IRQ))?;
    let log = match &config.serial_log {
        Some(p) => Some(io(
            format!("creating serial log {}", p.display()),
            File::create(p),
        )?),
        None => None,
    };
    let sink = ConsoleSink::new(log, config.console_echo, reset.panicked.clone());
    let serial = SerialDevice(Serial::new(IrqTrigger(irq), sink));
    let overlap = |e: crate::bus::Overlap| VmError::Config(e.to_string());
    pio.insert(SERIAL_PORT as u64, 8, Arc::new(Mutex::new(serial)))
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
    Ok(())
}

fn virtio_devices(config: &VmConfig) -> Result<Vec<Arc<Mutex<dyn VirtioDevice>>>, VmError> {
    let mut devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let id = format!("disk{i}");
        let blk = io(
            format!("opening disk {}", disk.path.display()),
            virtio::block::Block::open(&disk.path, disk.read_only, &id),
        )?;
        devices.push(Arc::new(Mutex::new(blk)));
    }
    if let Some(v) = &config.vsock {
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
    if config.rng {
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

fn add_virtio_device(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    cmdline: &mut Cmdline,
    index: usize,
    device: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<(), VmError> {
    let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
    let irq = VIRTIO_FIRST_IRQ + index as u32;
    let irqfd = io("virtio irqfd", EventFd::new(libc::EFD_NONBLOCK))?;
    kvm_call("KVM_IRQFD (virtio)", vm.register_irqfd(&irqfd, irq))?;
    let queues = crate::bus::lock(&device).queue_max_sizes().len();
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
    mmio.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))
        .map_err(|e| VmError::Config(e.to_string()))?;
    cmdline
        .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
        .map_err(|e| VmError::Config(format!("kernel command line: {e}")))?;
    Ok(())
}
