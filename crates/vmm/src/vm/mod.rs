//! A virtual machine, assembled either by a cold boot from a [`VmConfig`]
//! (kernel, initramfs, fresh devices) or from a snapshot
//! ([`Vm::restore`]), then run until it ends.
//!
//! - `devices`: what both assemble alike (KVM VM, memory, devices);
//! - `snapshot`: pausing a running VM and writing its snapshot;
//! - `restore`: rebuilding a VM from one;
//! - `error`: why a build, restore or snapshot failed, and which
//!   [`FailureKind`](supermachine_protocol::worker_control::FailureKind)
//!   the worker reports for it.

mod devices;
mod error;
mod restore;
mod snapshot;

pub use error::{SnapshotError, VmError};
pub use restore::{EmptyVm, RestoreConfig};

use crate::arch::x86_64::{self as arch, layout::*};
use crate::bus::Bus;
use crate::control::ControlHandle;
use crate::devices::legacy::ResetReporter;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::MmioTransport;
use crate::outcome::{self, Event, ExitSender, Outcome};
use crate::pause::PauseGate;
use crate::snapshot::hot_pages;
use crate::vcpu::VcpuRunner;
use devices::ConsoleConfig;
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use supermachine_protocol::fs_spec::{FsSpec, SymlinkPolicy};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Kernel arguments every guest gets. `reboot=k` makes reboots reach our
/// i8042 port; `panic=-1` turns a panic into an immediate reset we report.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet";
/// After the kernel prints its panic banner, how long to wait for it to reset
/// the machine before we call it a panic ourselves (for `panic=0` guests).
const PANIC_GRACE: Duration = Duration::from_secs(2);

/// A host file the guest sees as a virtio-blk disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The disk image: a regular file whose size is a whole number of 512-byte
    /// sectors; it is never grown.
    pub path: PathBuf,
    /// Offer the disk read-only and refuse the guest's writes (the file is
    /// then opened for reading only).
    pub read_only: bool,
}

/// The guest's virtio-vsock device and the host socket its streams meet.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id: 3 to 2^32 - 1 (0-2 are reserved).
    pub guest_cid: u64,
    /// Host muxer socket; guest-initiated streams go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// The guest's network card and where its link leads.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Where the guest may connect to; `None`: the link leads nowhere (for
    /// the restore of a snapshot that had a network, without one).
    pub egress: Option<supermachine_protocol::net_spec::NetSpec>,
    /// The `passt` binary that carries the guest's traffic (one per VM).
    pub passt: PathBuf,
    /// Where passt logs.
    pub log: Option<PathBuf>,
}

/// What a cold boot ([`Vm::build`]) makes.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// An uncompressed x86_64 vmlinux (ELF), not a bzImage.
    pub kernel: PathBuf,
    /// The initramfs, loaded at the top of RAM below 3 GiB.
    pub initrd: Option<PathBuf>,
    /// Appended to the base command line.
    pub extra_cmdline: String,
    /// Guest RAM in MiB, at least 64.
    pub memory_mib: u64,
    /// vCPUs, 1 to 64.
    pub vcpus: u8,
    /// In order: the first is /dev/vda.
    pub disks: Vec<DiskConfig>,
    /// A vsock device, if any (after the disks in MMIO slot order).
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device (the last in slot order), so the guest's entropy
    /// pool is seeded at once.
    pub rng: bool,
    /// Host directories shared with the guest as virtio-fs devices (after
    /// rng in slot order), each mounted in the guest by its tag.
    pub fs: Vec<FsSpec>,
    /// A virtio-net device (the last in slot order), if any.
    pub net: Option<NetConfig>,
    /// Where the guest's console goes: created 0600 if missing, appended to
    /// if present, never through a symlink. `None`: nowhere (except the echo).
    pub serial_log: Option<PathBuf>,
    /// The most the serial log keeps (`capped_log::DEFAULT_SERIAL_LOG_CAP`
    /// unless the host says otherwise).
    pub serial_log_cap: u64,
    /// Also copy the console to our stderr.
    pub console_echo: bool,
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
    vm: VmFd,
    mem: GuestMemoryMmap,
    memory_mib: u64,
    /// Moved onto their threads by [`Vm::run`].
    vcpus: Vec<VcpuRunner>,
    vcpu_count: usize,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Arc<Mutex<SerialDevice>>,
    gate: PauseGate,
    exit: ExitSender,
    events: Receiver<Event>,
    panicked: Arc<AtomicBool>,
    /// Set on a restore from a snapshot with no hot-page list yet.
    hot_pages_recorder: Option<hot_pages::Recorder>,
}

/// The buses, exit channel and pause gate every vCPU shares.
struct Wiring {
    pio: Bus,
    mmio: Bus,
    reset: ResetReporter,
    gate: PauseGate,
    exit: ExitSender,
    events: Receiver<Event>,
    panicked: Arc<AtomicBool>,
}

impl Wiring {
    fn new() -> Wiring {
        let (exit, events) = outcome::channel();
        let panicked = Arc::new(AtomicBool::new(false));
        Wiring {
            pio: Bus::default(),
            mmio: Bus::default(),
            reset: ResetReporter {
                exit: exit.clone(),
                panicked: panicked.clone(),
            },
            gate: PauseGate::default(),
            exit,
            events,
            panicked,
        }
    }

    fn runner(&self, id: u8, fd: kvm_ioctls::VcpuFd) -> VcpuRunner {
        VcpuRunner {
            id,
            fd,
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            reset: self.reset.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl Vm {
    fn assemble(
        vm: VmFd,
        mem: GuestMemoryMmap,
        memory_mib: u64,
        vcpus: Vec<VcpuRunner>,
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        serial: Arc<Mutex<SerialDevice>>,
        w: Wiring,
    ) -> Vm {
        Vm {
            vm,
            mem,
            memory_mib,
            vcpu_count: vcpus.len(),
            vcpus,
            transports,
            serial,
            gate: w.gate,
            exit: w.exit,
            events: w.events,
            panicked: w.panicked,
            hot_pages_recorder: None,
        }
    }

    /// A cold boot: fresh memory, the kernel and initramfs loaded, vCPU 0
    /// at the kernel's 64-bit entry point.
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
        let kvm = devices::open_kvm()?;
        let vm = devices::create_vm(&kvm)?;
        let mem = crate::memory::create(&vm, config.memory_mib)?;
        let mut w = Wiring::new();
        let console = ConsoleConfig {
            serial_log: config
                .serial_log
                .as_deref()
                .map(devices::open_serial_log)
                .transpose()?,
            serial_log_cap: config.serial_log_cap,
            echo: config.console_echo,
        };
        let serial = devices::add_legacy_devices(&vm, &mut w.pio, console, &w.reset, None)?;

        let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| VmError::Config(e.to_string()))?;
        cmdline
            .insert_str(BASE_CMDLINE)
            .map_err(|e| VmError::Config(e.to_string()))?;
        let mut transports = Vec::new();
        let virtio = devices::virtio_devices(
            &config.disks,
            config.vsock.as_ref(),
            config.rng,
            &config.fs,
            config.net.as_ref(),
        )?;
        for (index, device) in virtio.into_iter().enumerate() {
            transports.push(devices::add_virtio_device(
                &vm,
                &mem,
                &mut w.mmio,
                index,
                device,
            )?);
            let (base, irq) = devices::virtio_slot(index);
            cmdline
                .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
                .map_err(|e| VmError::Config(format!("kernel command line: {e}")))?;
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

        let host_cpu = arch::vcpu::HostCpu::query(&kvm)?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = kvm_call("KVM_CREATE_VCPU", vm.create_vcpu(id as u64))?;
            let entry = (id == 0).then_some(kernel.entry);
            arch::vcpu::configure_for_boot(&fd, &host_cpu, id, config.vcpus, entry)?;
            vcpus.push(w.runner(id, fd));
        }
        Ok(Vm::assemble(
            vm,
            mem,
            config.memory_mib,
            vcpus,
            transports,
            serial,
            w,
        ))
    }

    /// A handle that ends the VM with the given outcome (e.g. on SIGTERM).
    pub fn exit_sender(&self) -> ExitSender {
        self.exit.clone()
    }

    /// For a VM restored from a snapshot that has no hot-page list yet:
    /// what records it (see [`crate::snapshot::hot_pages`]).
    pub fn hot_pages_recorder(&self) -> Option<hot_pages::Recorder> {
        self.hot_pages_recorder.clone()
    }

    /// A handle for control requests (snapshots) while the VM runs.
    pub fn control(&self) -> ControlHandle {
        ControlHandle(self.exit.clone())
    }

    /// Starts the vCPUs and blocks until the machine ends, serving control
    /// requests meanwhile.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        for vcpu in std::mem::take(&mut self.vcpus) {
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
            match self.events.recv_timeout(tick) {
                Ok(Event::Exit(outcome)) => return Ok(outcome),
                Ok(Event::Snapshot(request)) => {
                    let result = self.snapshot_to(&request.dir, request.stay_paused);
                    let _ = request.reply.send(result);
                }
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
