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
    #[error("{ioctl} failed: {source}")]
    Ioctl {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MSRS` stops at the first MSR it rejects; this names it.
    #[error("KVM_SET_MSRS rejected MSR {index:#x} (value {data:#x})")]
    MsrRejected { index: u32, data: u64 },
    #[error("cannot read the host's MSR index list (KVM_GET_MSR_INDEX_LIST): {0}")]
    MsrIndexList(String),
    #[error("building a KVM {what} buffer: {source:?}")]
    Fam {
        what: &'static str,
        source: vmm_sys_util::fam::Error,
    },
    #[error("saved xsave area is {words} u32 words; at least 1024 are required")]
    XsaveTooSmall { words: usize },
    /// The guest's TSC ran at another rate where the snapshot was taken,
    /// and this host's KVM cannot scale it (no TSC scaling support).
    #[error(
        "the snapshot's guest TSC runs at {saved_khz} kHz, this host's at {host_khz} kHz, \
         and this host's KVM cannot scale it ({source}): restore the snapshot on a machine \
         with the same TSC rate, or take it again here"
    )]
    TscRate {
        saved_khz: u32,
        host_khz: u32,
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

pub type Result<T> = std::result::Result<T, StateError>;

/// The KVM-held state of a whole machine: the VM plus each vCPU, in vCPU id
/// order. Device states and the memory file sit beside it in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
}
