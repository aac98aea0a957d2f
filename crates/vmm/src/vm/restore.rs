//! Rebuilding a VM from a snapshot.
//!
//! The devices are built exactly as for a boot, from the same kind of
//! configuration, and then put into their saved state; guest memory is the
//! snapshot's memory file mapped copy-on-write. Order: memory, VM state
//! (interrupt controllers, PIT, clock), vCPUs, devices (registers only),
//! and only then are the devices brought back to life, so whatever they
//! signal lands in restored interrupt controllers. Beside the vCPUs and
//! devices, a thread readies the hot pages: their host pages first, then,
//! once vCPU 0 is restored, the guest's mappings of them through it.

use super::devices::{self, ConsoleConfig};
use super::{DiskConfig, FsSpec, NetConfig, SnapshotError, Vm, VmError, VsockConfig, Wiring};
use crate::arch::x86_64::host;
use crate::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::MmioTransport;
use crate::snapshot::bundle::{SnapshotDir, SnapshotState, MEMORY_FILE};
use crate::snapshot::hot_pages::{self, HotPages};
use crate::snapshot::limits::{self, HostLimits};
use crate::snapshot::memory::{map_memory, prefault_in_background, RegionLayout};
use crate::snapshot::{restore_vcpu, restore_vm};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// The host side of a restored VM: which files stand in for its disks,
/// where its sockets and logs go. The snapshot says everything else.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// A directory written by a snapshot (state + memory files).
    pub snapshot_dir: PathBuf,
    /// The same disks, in the same order, as the snapshotted VM had.
    pub disks: Vec<DiskConfig>,
    /// The vsock device, with the guest CID the snapshot has; its socket may
    /// be another path.
    pub vsock: Option<VsockConfig>,
    /// Whether the snapshotted VM had a virtio-rng device.
    pub rng: bool,
    /// The shared directories, with the tags, policies and read-only-ness
    /// the snapshotted VM had; the host paths may be others.
    pub fs: Vec<FsSpec>,
    /// The network, if the snapshotted VM had one; a snapshot with a
    /// network restored without one gets a card whose link leads nowhere.
    pub net: Option<NetConfig>,
    /// Where the restored guest's console goes (appended to; see
    /// `VmConfig::serial_log`).
    pub serial_log: Option<PathBuf>,
    /// The most the serial log keeps (see `VmConfig::serial_log_cap`).
    pub serial_log_cap: u64,
    /// Also copy the console to the worker's log.
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
    /// Opens KVM and creates the VM (with its interrupt controllers and PIT).
    /// Fails if this host has no usable KVM.
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

impl Vm {
    /// Builds the VM saved in `config.snapshot_dir`, ready to [`Vm::run`]
    /// from the instruction it was paused at.
    pub fn restore(config: &RestoreConfig) -> Result<Vm, VmError> {
        Vm::restore_into(EmptyVm::new()?, config)
    }

    /// [`Vm::restore`] into a VM prepared in advance.
    pub fn restore_into(empty: EmptyVm, config: &RestoreConfig) -> Result<Vm, VmError> {
        let dir = &config.snapshot_dir;
        // The snapshot may come from anywhere: its files are opened
        // without following symlinks and only if regular, and the machine
        // it describes must be one this host can carry (`limits`).
        let (snapshot, state) = read_snapshot(dir)?;
        let EmptyVm {
            vm,
            serial_log: opened_log,
        } = empty;
        limits::check(&state, &HostLimits::of_this_host(&vm)).map_err(|source| {
            SnapshotError::Refused {
                dir: dir.clone(),
                source,
            }
        })?;
        let vcpu_count = state.machine.vcpus.len();
        let (memory_file, mem) = map_snapshot_memory(&snapshot, dir, &state)?;
        crate::memory::register(&vm, &mem, false)?;
        let hot = hot_pages::load(dir);
        // Made before anything touches guest memory, so that everything
        // the restore and the guest touch is in the recording.
        let recorder = hot
            .is_none()
            .then(|| hot_pages::Recorder::new(mem.clone(), dir.clone()));
        restore_vm(&vm, &state.machine.vm).map_err(|source| SnapshotError::State {
            what: "restoring the VM".into(),
            source,
        })?;
        let under_tcg = host::under_qemu_tcg();
        let serial_log = match (&config.serial_log, opened_log) {
            (Some(wanted), Some((path, file))) if *wanted == path => Some(file),
            (Some(wanted), _) => Some(devices::open_serial_log(wanted)?),
            (None, _) => None,
        };
        let mut w = Wiring::new();
        let vcpu_fds = (0..vcpu_count)
            .map(|id| super::kvm_call("KVM_CREATE_VCPU", vm.create_vcpu(id as u64)))
            .collect::<Result<Vec<_>, _>>()?;
        // The hot pages' host side (copying the written ones, mapping the
        // rest) and then their guest mappings are the longest part of a
        // restore and touch only guest memory and vCPU 0: a thread of
        // their own does them beside the vCPU and device set-up.
        let vcpu0_ready = Gate::default();
        let (serial, transports) = std::thread::scope(|scope| {
            // Opens the gate however this closure ends (an early error, a
            // panic), before the scope waits for the thread behind it.
            let _unblock = OpenOnDrop(&vcpu0_ready);
            let warm = hot.as_ref().zip(vcpu_fds.first()).map(|(hot, vcpu0)| {
                let (vm, mem, ready) = (&vm, &mem, &vcpu0_ready);
                let (file, layout) = (&memory_file, &state.memory);
                move || warm_hot_pages(vm, mem, file, layout, hot, vcpu0, ready)
            });
            // Without a thread, the same work on this one once the vCPUs
            // are restored (`warm` only borrows, so it can run either way).
            let inline = warm.filter(|&warm| {
                let spawned = std::thread::Builder::new()
                    .name("hot-pages".into())
                    .spawn_scoped(scope, warm);
                spawned.is_err()
            });
            let restored = restore_vcpu_states(&vcpu_fds, &state, under_tcg);
            vcpu0_ready.open(restored.is_ok());
            restored?;
            if let Some(warm) = inline {
                warm();
            }
            let console = ConsoleConfig {
                serial_log,
                serial_log_cap: config.serial_log_cap,
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
                .map_err(SnapshotError::Reactivate)?;
        }
        let mut vm = Vm::assemble(vm, mem, state.memory_mib, vcpus, transports, serial, w);
        vm.hot_pages_recorder = recorder;
        Ok(vm)
    }
}

/// Opens the snapshot directory `dir` and reads its state (nothing of
/// KVM's yet): refused if the state is not a regular file, too large,
/// damaged, or of another format version.
fn read_snapshot(dir: &Path) -> Result<(SnapshotDir, SnapshotState), SnapshotError> {
    let snapshot = SnapshotDir::open(dir)?;
    let state = snapshot.read_state()?;
    Ok((snapshot, state))
}

/// Maps the snapshot's memory file copy-on-write as its state lays it out:
/// refused if it is not a regular file or is shorter than the layout.
fn map_snapshot_memory(
    snapshot: &SnapshotDir,
    dir: &Path,
    state: &SnapshotState,
) -> Result<(File, vm_memory::GuestMemoryMmap), SnapshotError> {
    let memory_file = snapshot.open_file(MEMORY_FILE)?;
    let mem = map_memory(&memory_file, &state.memory).map_err(|source| SnapshotError::Memory {
        path: dir.join(MEMORY_FILE),
        source,
    })?;
    Ok((memory_file, mem))
}

/// Puts each vCPU into its saved state.
fn restore_vcpu_states(
    vcpu_fds: &[kvm_ioctls::VcpuFd],
    state: &SnapshotState,
    under_tcg: bool,
) -> Result<(), VmError> {
    for (id, (fd, saved)) in vcpu_fds.iter().zip(&state.machine.vcpus).enumerate() {
        let mut saved = saved.clone();
        saved.sregs.tr.type_ = host::restored_tr_type(saved.sregs.tr.type_, under_tcg);
        restore_vcpu(fd, &saved).map_err(|source| SnapshotError::State {
            what: format!("restoring vCPU {id}"),
            source,
        })?;
    }
    Ok(())
}

/// "vCPU 0 is restored" (or failed to be), for the thread that builds the
/// guest mappings through it.
#[derive(Default)]
struct Gate {
    outcome: Mutex<Option<bool>>,
    opened: Condvar,
}

impl Gate {
    /// Says how vCPU 0 came out; only the first word counts.
    fn open(&self, ok: bool) {
        lock(&self.outcome).get_or_insert(ok);
        self.opened.notify_all();
    }

    /// Waits for [`Gate::open`]; true if the vCPU was restored.
    fn wait(&self) -> bool {
        let mut outcome = lock(&self.outcome);
        loop {
            match *outcome {
                Some(ok) => return ok,
                None => outcome = self.opened.wait(outcome).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Opens the gate as "not restored" unless it was opened already.
struct OpenOnDrop<'a>(&'a Gate);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

/// The hot pages: their host side, then (once vCPU 0 is restored, and if
/// this KVM can) their guest mappings; last, the rest of the stored pages
/// are left to a background thread.
fn warm_hot_pages(
    vm: &kvm_ioctls::VmFd,
    mem: &vm_memory::GuestMemoryMmap,
    memory_file: &File,
    layout: &[RegionLayout],
    hot: &HotPages,
    vcpu0: &kvm_ioctls::VcpuFd,
    vcpu0_ready: &Gate,
) {
    let warmed = hot_pages::map_ahead(mem, hot);
    tracing::debug!(
        copied = warmed.copied,
        mapped = warmed.mapped,
        "hot pages: host side ready"
    );
    // Behind the guest, and never while recording (there is no list then):
    // the recording is what the guest touched.
    prefault_in_background(memory_file, mem, layout);
    if vcpu0_ready.wait() && kvm_maps_ahead(vm) {
        build_guest_mappings(vcpu0, mem, hot);
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
    let had_net = matches!(
        state.devices.last().map(|t| &t.device),
        Some(crate::devices::virtio::DeviceState::Net(_))
    );
    let nowhere = NetConfig {
        egress: None,
        passt: PathBuf::new(),
        log: None,
    };
    let net = match (&config.net, had_net) {
        (Some(net), _) => Some(net),
        (None, true) => Some(&nowhere),
        (None, false) => None,
    };
    let virtio = devices::virtio_devices(
        &config.disks,
        config.vsock.as_ref(),
        config.rng,
        &config.fs,
        net,
    )?;
    if virtio.len() != state.devices.len() {
        return Err(SnapshotError::DeviceCount {
            saved: state.devices.len(),
            made: virtio.len(),
        }
        .into());
    }
    let mut transports = Vec::with_capacity(virtio.len());
    for (index, (device, saved)) in virtio.into_iter().zip(&state.devices).enumerate() {
        let transport = devices::add_virtio_device(vm, mem, &mut w.mmio, index, device)?;
        lock(&transport)
            .restore(saved)
            .map_err(SnapshotError::from)?;
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

#[cfg(test)]
mod tests {
    //! The restore's steps that need no KVM, and the kind of failure the
    //! worker reports for each refusal.

    use super::*;
    use crate::snapshot::bundle::{write_state, STATE_FILE};
    use crate::snapshot::FORMAT_VERSION;
    use supermachine_protocol::worker_control::FailureKind;

    /// A snapshot directory with a valid state of `memory_mib` MiB and a
    /// (sparse) memory file of `memory_bytes`.
    fn snapshot_dir(memory_mib: u64, memory_bytes: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_state(
            dir.path(),
            &crate::test_support::snapshot_state(1, memory_mib),
        )
        .unwrap();
        let memory = File::create(dir.path().join(MEMORY_FILE)).unwrap();
        memory.set_len(memory_bytes).unwrap();
        dir
    }

    /// The kind of failure the worker reports when the restore of `dir`
    /// fails before it needs KVM (`None` if those steps succeed).
    fn refusal_kind(dir: &Path) -> Option<FailureKind> {
        let refused = |e: SnapshotError| Some(VmError::from(e).kind());
        let (snapshot, state) = match read_snapshot(dir) {
            Ok(read) => read,
            Err(e) => return refused(e),
        };
        match map_snapshot_memory(&snapshot, dir, &state) {
            Ok(_) => None,
            Err(e) => refused(e),
        }
    }

    #[test]
    fn a_whole_snapshot_passes_the_steps_before_kvm() {
        let dir = snapshot_dir(64, 64 << 20);
        assert_eq!(refusal_kind(dir.path()), None);
    }

    #[test]
    fn a_damaged_state_file_is_a_format_failure() {
        let dir = snapshot_dir(64, 64 << 20);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(refusal_kind(dir.path()), Some(FailureKind::SnapshotFormat));
    }

    #[test]
    fn a_state_file_of_another_version_is_a_format_failure() {
        let dir = snapshot_dir(64, 64 << 20);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        // The version, then the header checksum made good again: only the
        // version is wrong.
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(refusal_kind(dir.path()), Some(FailureKind::SnapshotFormat));
    }

    #[test]
    fn a_truncated_memory_file_is_a_memory_failure() {
        let dir = snapshot_dir(64, 1 << 20);
        assert_eq!(refusal_kind(dir.path()), Some(FailureKind::SnapshotMemory));
    }

    #[test]
    fn a_missing_memory_file_is_an_io_failure() {
        let dir = snapshot_dir(64, 64 << 20);
        std::fs::remove_file(dir.path().join(MEMORY_FILE)).unwrap();
        assert_eq!(refusal_kind(dir.path()), Some(FailureKind::Io));
    }
}
