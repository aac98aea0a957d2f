//! Why building, restoring or snapshotting a VM failed, typed so that the
//! worker can tell its host which kind of failure it was
//! ([`FailureKind`]) without the host reading the message: "the TSC rate
//! differs" apart from "the disk's size differs" apart from "the state
//! file is damaged".

use crate::arch::x86_64 as arch;
use crate::devices::serial::SerialRestoreError;
use crate::devices::virtio::block::BlockRestoreError;
use crate::devices::virtio::persist::{DeviceRestoreError, TransportRestoreError};
use crate::pause::PauseError;
use crate::snapshot::bundle::BundleError;
use crate::snapshot::limits::Refused;
use crate::snapshot::memory::MemoryFileError;
use crate::snapshot::StateError;
use std::path::PathBuf;
use supermachine_protocol::worker_control::{FailureKind, WorkerFailure};

/// Why a VM could not be built, restored or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened; the text says what to do.
    #[error("/dev/kvm: {0}")]
    Kvm(String),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    KvmCall {
        /// The ioctl, or what it was for.
        what: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be made or registered.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// A vCPU could not be set up for a boot.
    #[error("setting up a vCPU: {0}")]
    Vcpu(#[from] arch::vcpu::VcpuSetupError),
    /// The kernel or initramfs could not be loaded.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// A host file or thread could not be made or used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration asks for something this VMM does not make.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Taking or restoring a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// Why taking or restoring a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot directory or its state file could not be opened or
    /// read, or the state is not one this build reads.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The state describes a machine this host does not carry, or one this
    /// VMM never makes.
    #[error("{}: {source}", dir.display())]
    Refused {
        /// The snapshot directory.
        dir: PathBuf,
        /// What it asks for that is refused.
        source: Refused,
    },
    /// The memory file does not fit the state's layout, or could not be
    /// mapped or written.
    #[error("{}: {source}", path.display())]
    Memory {
        /// The memory file.
        path: PathBuf,
        /// What is wrong with it.
        source: MemoryFileError,
    },
    /// KVM refused to give or take a piece of the machine's state.
    #[error("{what}: {source}")]
    State {
        /// Which piece (a vCPU, the VM).
        what: String,
        /// The failed step.
        source: StateError,
    },
    /// The serial port's saved state is not one a UART can have.
    #[error(transparent)]
    Serial(#[from] SerialRestoreError),
    /// The restore would make other virtio devices than were saved.
    #[error(
        "the snapshot has {saved} virtio devices, this restore would make {made} \
         (give it the same disks as the snapshotted VM)"
    )]
    DeviceCount {
        /// How many the snapshot has.
        saved: usize,
        /// How many this restore's configuration makes.
        made: usize,
    },
    /// A virtio device refused its saved state.
    #[error(transparent)]
    Device(#[from] TransportRestoreError),
    /// A restored device could not start again.
    #[error("reactivating a device: {0}")]
    Reactivate(#[source] std::io::Error),
    /// The vCPUs could not be stopped, or one's state not read.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// A snapshot file could not be made or synced.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl VmError {
    /// Which kind of failure this is, for the worker's host.
    pub fn kind(&self) -> FailureKind {
        match self {
            VmError::Kvm(_) | VmError::KvmCall { .. } | VmError::Vcpu(_) => FailureKind::Kvm,
            VmError::Memory(crate::memory::MemoryError::Register { .. }) => FailureKind::Kvm,
            VmError::Memory(crate::memory::MemoryError::Map { .. }) | VmError::Boot(_) => {
                FailureKind::Other
            }
            VmError::Io { .. } => FailureKind::Io,
            VmError::Config(_) => FailureKind::BadRequest,
            VmError::Snapshot(e) => e.kind(),
        }
    }

    /// This error as the worker reports it: its kind and its text.
    pub fn failure(&self) -> WorkerFailure {
        WorkerFailure::new(self.kind(), self.to_string())
    }
}

impl SnapshotError {
    /// Which kind of failure this is, for the worker's host.
    pub fn kind(&self) -> FailureKind {
        match self {
            SnapshotError::Bundle(BundleError::Io { .. }) => FailureKind::Io,
            SnapshotError::Bundle(BundleError::Format { .. } | BundleError::TooLarge { .. }) => {
                FailureKind::SnapshotFormat
            }
            SnapshotError::Refused { source, .. } => match source {
                Refused::TooManyVcpus { .. } | Refused::TooMuchMemory { .. } => {
                    FailureKind::HostLimits
                }
                // No machine of ours has these: the state is damaged or
                // not ours.
                Refused::NoVcpus | Refused::Layout { .. } => FailureKind::SnapshotFormat,
            },
            SnapshotError::Memory { source, .. } => match source {
                MemoryFileError::TooShort { .. } | MemoryFileError::Layout(_) => {
                    FailureKind::SnapshotMemory
                }
                MemoryFileError::Write(_) | MemoryFileError::Map(_) => FailureKind::Io,
            },
            SnapshotError::State { source, .. } => match source {
                StateError::TscRate { .. } => FailureKind::TscRate,
                _ => FailureKind::Kvm,
            },
            SnapshotError::Serial(_) => FailureKind::SnapshotFormat,
            SnapshotError::DeviceCount { .. } => FailureKind::DiskMismatch,
            SnapshotError::Device(e) => transport_kind(e),
            SnapshotError::Reactivate(_) | SnapshotError::Io { .. } => FailureKind::Io,
            SnapshotError::Pause(PauseError::Timeout { .. }) => FailureKind::NotRunning,
            SnapshotError::Pause(PauseError::Save { .. }) => FailureKind::Kvm,
        }
    }
}

/// A device that refuses its saved state: the disks given differ from the
/// snapshotted VM's (another size, another read-only flag, another device
/// in that slot), or the saved device state is not one a device can have.
fn transport_kind(e: &TransportRestoreError) -> FailureKind {
    match e {
        TransportRestoreError::Device(
            DeviceRestoreError::WrongKind { .. }
            | DeviceRestoreError::Block(
                BlockRestoreError::Capacity { .. } | BlockRestoreError::ReadOnly { .. },
            ),
        ) => FailureKind::DiskMismatch,
        // Another CID than when snapshotted: the worker's configuration,
        // not the snapshot.
        TransportRestoreError::Device(DeviceRestoreError::Vsock(_)) => FailureKind::Other,
        TransportRestoreError::Device(DeviceRestoreError::Fs(_)) => FailureKind::MountMismatch,
        TransportRestoreError::QueueCount { .. } | TransportRestoreError::Queue { .. } => {
            FailureKind::SnapshotFormat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: impl Into<SnapshotError>) -> FailureKind {
        VmError::from(e.into()).kind()
    }

    #[test]
    fn a_disk_of_another_size_or_mode_is_a_disk_mismatch() {
        let size = BlockRestoreError::Capacity {
            disk: "disk0".into(),
            now: 1,
            saved: 2,
        };
        let mode = BlockRestoreError::ReadOnly {
            disk: "disk0".into(),
            now: true,
            saved: false,
        };
        for e in [size, mode] {
            let e = TransportRestoreError::Device(DeviceRestoreError::Block(e));
            assert_eq!(kind(e), FailureKind::DiskMismatch);
        }
        assert_eq!(
            kind(SnapshotError::DeviceCount { saved: 2, made: 1 }),
            FailureKind::DiskMismatch
        );
    }

    #[test]
    fn a_tsc_rate_this_host_cannot_scale_is_told_apart_from_other_kvm_refusals() {
        let tsc = SnapshotError::State {
            what: "restoring vCPU 0".into(),
            source: StateError::TscRate {
                saved_khz: 2_000_000,
                host_khz: 3_000_000,
                source: kvm_ioctls::Error::new(libc::EINVAL),
            },
        };
        assert_eq!(kind(tsc), FailureKind::TscRate);
        let other = SnapshotError::State {
            what: "restoring vCPU 0".into(),
            source: StateError::XsaveTooSmall { words: 3 },
        };
        assert_eq!(kind(other), FailureKind::Kvm);
    }

    #[test]
    fn a_machine_larger_than_this_host_is_a_host_limit_and_a_foreign_layout_a_format_failure() {
        let refused = |source| SnapshotError::Refused {
            dir: PathBuf::from("snap"),
            source,
        };
        let big = Refused::TooMuchMemory {
            mib: 1 << 30,
            host_mib: 1024,
        };
        assert_eq!(kind(refused(big)), FailureKind::HostLimits);
        assert_eq!(kind(refused(Refused::NoVcpus)), FailureKind::SnapshotFormat);
    }

    #[test]
    fn the_failure_carries_the_message() {
        let e = VmError::from(SnapshotError::DeviceCount { saved: 2, made: 1 });
        let failure = e.failure();
        assert_eq!(failure.message, e.to_string());
        assert!(failure.message.contains("same disks"), "{failure}");
    }
}
