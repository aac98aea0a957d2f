//! Snapshot state of the machine itself: what KVM holds for each vCPU and
//! for the VM (interrupt controllers, PIT, clock), as plain serde trees, and
//! the versioned, checksummed container they are stored in.
//!
//! Devices and guest memory are not here: every device owns its own state
//! struct, and memory is a separate file mapped copy-on-write on restore.
//!
//! - [`vcpu`]: [`save_vcpu`] / [`restore_vcpu`] and [`VcpuState`].
//! - [`vm`]: [`save_vm`] / [`restore_vm`] and [`VmState`].
//! - [`format`]: [`encode`] / [`decode`], the on-disk envelope.
//! - [`memory`]: the sparse guest memory file and its copy-on-write mapping.
//! - [`hot_pages`]: the pages a restore touches first, mapped ahead of it;
//!   [`fault_around`] keeps their recording exact.
//! - [`bundle`]: the snapshot directory (state file + memory file).
//! - [`limits`]: what a restore takes from a snapshot it did not make.

pub mod bundle;
pub mod fault_around;
pub mod format;
pub mod hot_pages;
pub mod limits;
pub mod memory;
pub mod vcpu;
pub mod vm;

use serde::{Deserialize, Serialize};

pub use format::{decode, encode, envelope, FormatError, FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use vcpu::{msr_index_list, restore_vcpu, save_vcpu, FpuState, VcpuState};
pub use vm::{restore_vm, save_vm, VmState};

/// One KVM ioctl that failed while saving or restoring state. The name is
/// the ioctl (`"KVM_GET_SREGS"`), so a failure says exactly which piece of
/// the machine could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Ioctl {
        /// The ioctl's name, e.g. `"KVM_GET_SREGS"`.
        ioctl: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MSRS` stops at the first MSR it rejects; this names it.
    #[error("KVM_SET_MSRS rejected MSR {index:#x} (value {data:#x})")]
    MsrRejected {
        /// The MSR's index.
        index: u32,
        /// The value it was given.
        data: u64,
    },
    /// The host's list of MSRs could not be read (the error, as text: the list
    /// is read once per process and its failure kept).
    #[error("cannot read the host's MSR index list (KVM_GET_MSR_INDEX_LIST): {0}")]
    MsrIndexList(String),
    /// A variable-length KVM buffer (CPUID entries, MSRs, XSAVE) could not
    /// be built: more entries than it can hold.
    #[error("building a KVM {what} buffer: {source:?}")]
    Fam {
        /// Which buffer, e.g. `"CPUID"`.
        what: &'static str,
        /// The buffer's error.
        source: vmm_sys_util::fam::Error,
    },
    /// The saved XSAVE area is shorter than the 4 KiB legacy region, which
    /// this VMM always saves: the state is damaged or not ours.
    #[error("saved xsave area is {words} u32 words; at least 1024 are required")]
    XsaveTooSmall {
        /// The saved area's length in u32 words.
        words: usize,
    },
    /// The guest's TSC ran at another rate where the snapshot was taken,
    /// and this host's KVM cannot scale it (no TSC scaling support).
    #[error(
        "the snapshot's guest TSC runs at {saved_khz} kHz, this host's at {host_khz} kHz, \
         and this host's KVM cannot scale it ({source}): restore the snapshot on a machine \
         with the same TSC rate, or take it again here"
    )]
    TscRate {
        /// The guest TSC rate where the snapshot was taken.
        saved_khz: u32,
        /// This host's TSC rate.
        host_khz: u32,
        /// KVM's error from `KVM_SET_TSC_KHZ`.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl StateError {
    pub(crate) fn ioctl(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
        move |source| StateError::Ioctl { ioctl, source }
    }

    /// The errno of a failed ioctl, if this is one (used to tell "not
    /// supported on this host" apart from real failures).
    pub fn errno(&self) -> Option<i32> {
        match self {
            StateError::Ioctl { source, .. } => Some(source.errno()),
            _ => None,
        }
    }
}

/// Saving or restoring machine state.
pub type Result<T> = std::result::Result<T, StateError>;

/// The KVM-held state of a whole machine: the VM plus each vCPU, in vCPU id
/// order. Device states and the memory file sit beside it in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// The VM-wide state: interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Each vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
}
