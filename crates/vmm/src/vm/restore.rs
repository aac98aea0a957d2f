//! Rebuilding a VM from a snapshot.
//!
//! The devices are built exactly as for a boot, from the same kind of
//! configuration, and then put into their saved state; guest memory is the
//! snapshot's memory file mapped copy-on-write. Order: memory, VM state
//! (interrupt controllers, PIT, clock), vCPUs, devices (registers only;
//! meanwhile a thread builds the guest mappings of the hot pages through
//! vCPU 0), and only then are the devices brought back to life, so
//! whatever they signal lands in restored interrupt controllers.

use super::devices::{self, ConsoleConfig};
use super::{DiskConfig, Vm, VmError, VsockConfig, Wiring};
use crate::arch::x86_64::host;
use crate::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::MmioTransport;
use crate::snapshot::bundle::{read_state, SnapshotState, MEMORY_FILE};
use crate::snapshot::hot_pages::{self, HotPages};
use crate::snapshot::memory::{map_memory, prefault_in_background};
use crate::snapshot::{restore_vcpu, restore_vm};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The host side of a restored VM: which files stand in for its disks,
/// where its sockets and logs go. The snapshot says everything else.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// A directory written by a snapshot (state + memory files).
    pub snapshot_dir: PathBuf,
    /// The same disks, in the same order, as the snapshotted VM had.
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    pub rng: bool,
    pub serial_log: Option<PathBuf>,
    pub console_echo: bool,
}

/// A KVM VM with its interrupt controllers and PIT, but no memory, devices
/// or vCPUs yet: what a standby worker prepares before it is told which
/// snapshot to restore, so that work is off the restore's critical path.
pub struct EmptyVm {
    vm: kvm_ioctls::VmFd,
    /// The serial log, opened ahead ([`EmptyVm::with_serial_log`]).
    serial_log: Option<(PathBuf, File)>,
}

impl EmptyVm {
    pub fn new() -> Result<EmptyVm, VmError> {
        let kvm = devices::open_kvm()?;
        Ok(EmptyVm {
            vm: devices::create_vm(&kvm)?,
            serial_log: None,
        })
    }

    /// Opens (creates) the serial log now; a restore whose config names
    /// the same file uses it instead of opening it on its critical path (a
    /// file creation costs milliseconds on a network or 9p file system).
    pub fn with_serial_log(mut self, path: &Path) -> Result<EmptyVm, VmError> {
        let file = devices::open_serial_log(path)?;
        self.serial_log = Some((path.to_path_buf(), file));
        Ok(self)
    }
}

fn snapshot_err(e: impl std::fmt::Display) -> VmError {
    VmError::Snapshot(e.to_string())
}

impl Vm {
    /// Builds the VM saved in `config.snapshot_dir`, ready to [`Vm::run`]
    /// from the instruction it was paused at.
    pub fn restore(config: &RestoreConfig) -> Result<Vm, VmError> {
        Vm::restore_into(EmptyVm::new()?, config)
    }

    /// [`Vm::restore`] into a VM prepared in advance.
    pub fn restore_into(empty: EmptyVm, config: &RestoreConfig) -> Result<Vm, VmError> {
        let dir = &config.snapshot_dir;
        let state = read_state(dir).map_err(snapshot_err)?;
        let vcpu_count = state.machine.vcpus.len();
        if vcpu_count == 0 || vcpu_count > 64 {
            return Err(snapshot_err(format!(
                "{} saved vCPUs: not a machine this VMM makes",
                vcpu_count
            )));
        }
        let EmptyVm {
            vm,
            serial_log: opened_log,
        } = empty;
        let memory_path = dir.join(MEMORY_FILE);
        let memory_file = File::open(&memory_path)
            .map_err(|e| snapshot_err(format!("{}: {e}", memory_path.display())))?;
        let mem = map_memory(&memory_file, &state.memory)
            .map_err(|e| snapshot_err(format!("{}: {e}", memory_path.display())))?;
        devices::register_memory(&vm, &mem, false)?;
        let hot = hot_pages::load(dir);
        // Made before anything touches guest memory, so that everything
        // the restore and the guest touch is in the recording.
        let recorder = hot
            .is_none()
            .then(|| hot_pages::Recorder::new(mem.clone(), dir.clone()));
        if let Some(hot) = &hot {
            let warmed = hot_pages::map_ahead(&mem, hot);
            tracing::debug!(
                copied = warmed.copied,
                mapped = warmed.mapped,
                "hot pages: host side ready"
            );
            // The rest of the stored pages, behind the guest. Not while
            // recording: the recording is what the guest touched.
            prefault_in_background(&memory_file, &mem, &state.memory);
        }

        restore_vm(&vm, &state.machine.vm).map_err(snapshot_err)?;
        let under_tcg = host::under_qemu_tcg();
        let mut vcpu_fds = Vec::with_capacity(vcpu_count);
        for (id, saved) in state.machine.vcpus.iter().enumerate() {
            let fd = super::kvm_call("KVM_CREATE_VCPU", vm.create_vcpu(id as u64))?;
            let mut saved = saved.clone();
            saved.sregs.tr.type_ = host::restored_tr_type(saved.sregs.tr.type_, under_tcg);
            restore_vcpu(&fd, &saved)
                .map_err(|e| snapshot_err(format!("restoring vCPU {id}: {e}")))?;
            vcpu_fds.push(fd);
        }

        let serial_log = match (&config.serial_log, opened_log) {
            (Some(wanted), Some((path, file))) if *wanted == path => Some(file),
            (Some(wanted), _) => Some(devices::open_serial_log(wanted)?),
            (None, _) => None,
        };
        let mut w = Wiring::new();
        // The device set-up is mostly system calls and file opens: the
        // guest mappings (a few µs a page, thousands of pages) are built
        // beside it rather than after it.
        let ahead = hot.as_ref().filter(|_| kvm_maps_ahead(&vm));
        let (serial, transports) = std::thread::scope(|scope| {
            if let (Some(hot), Some(vcpu0)) = (ahead, vcpu_fds.first()) {
                let mem = &mem;
                let build = move || build_guest_mappings(vcpu0, mem, hot);
                // No thread to be had: the same work, on this one.
                if std::thread::Builder::new()
                    .name("prefault".into())
                    .spawn_scoped(scope, build)
                    .is_err()
                {
                    build_guest_mappings(vcpu0, mem, hot);
                }
            }
            let console = ConsoleConfig {
                serial_log,
                echo: config.console_echo,
            };
            restore_devices(&vm, &mem, &mut w, console, config, &state)
        })?;
        let vcpus = vcpu_fds
            .into_iter()
            .enumerate()
            .map(|(id, fd)| w.runner(id as u8, fd))
            .collect();
        for transport in &transports {
            lock(transport)
                .resume_after_restore()
                .map_err(|e| snapshot_err(format!("reactivating a device: {e}")))?;
        }
        let mut vm = Vm::assemble(vm, mem, state.memory_mib, vcpus, transports, serial, w);
        vm.hot_pages_recorder = recorder;
        Ok(vm)
    }
}

/// The serial port and the virtio transports, in MMIO slot order.
type RestoredDevices = (Arc<Mutex<SerialDevice>>, Vec<Arc<Mutex<MmioTransport>>>);

/// The serial port and the virtio devices, put into their saved state but
/// not yet running.
fn restore_devices(
    vm: &kvm_ioctls::VmFd,
    mem: &vm_memory::GuestMemoryMmap,
    w: &mut Wiring,
    console: ConsoleConfig,
    config: &RestoreConfig,
    state: &SnapshotState,
) -> Result<RestoredDevices, VmError> {
    let serial =
        devices::add_legacy_devices(vm, &mut w.pio, console, &w.reset, Some(&state.serial))?;
    let virtio = devices::virtio_devices(&config.disks, config.vsock.as_ref(), config.rng)?;
    if virtio.len() != state.devices.len() {
        return Err(snapshot_err(format!(
            "the snapshot has {} virtio devices, this restore would make {} \
             (give it the same disks as the snapshotted VM)",
            state.devices.len(),
            virtio.len()
        )));
    }
    let mut transports = Vec::with_capacity(virtio.len());
    for (index, (device, saved)) in virtio.into_iter().zip(&state.devices).enumerate() {
        let transport = devices::add_virtio_device(vm, mem, &mut w.mmio, index, device)?;
        lock(&transport).restore(saved).map_err(snapshot_err)?;
        transports.push(transport);
    }
    Ok((serial, transports))
}

/// Whether this KVM can build the guest's second-level mappings ahead
/// (Linux 6.10+); elsewhere the guest faults its hot pages in as it goes.
fn kvm_maps_ahead(vm: &kvm_ioctls::VmFd) -> bool {
    let can = hot_pages::can_prefault(vm);
    if !can {
        tracing::debug!(
            "hot pages: this KVM cannot build guest mappings ahead \
             (KVM_PRE_FAULT_MEMORY, Linux 6.10+); the guest maps them as it goes"
        );
    }
    can
}

/// Builds the guest's second-level mappings of its hot pages through
/// `vcpu`, whose state is restored.
fn build_guest_mappings(
    vcpu: &kvm_ioctls::VcpuFd,
    mem: &vm_memory::GuestMemoryMmap,
    hot: &HotPages,
) {
    let pages = hot_pages::prefault(vcpu, mem, hot);
    tracing::debug!(pages, "hot pages: guest mappings built ahead");
}
