//! The supermachine virtual machine monitor: one KVM virtual machine per
//! worker process, booted from a Linux vmlinux with an initramfs, with a
//! serial console and virtio-mmio block, vsock and rng devices; or restored
//! from a snapshot of one ([`snapshot`], [`Vm::restore`]).
//!
//! The layout follows the machine: `arch/` knows x86_64 boot (and each
//! vCPU's boot state), [`memory`] guest RAM, `devices/` the hardware the
//! guest sees, [`vm`] assembles them, [`vcpu`] runs them, [`snapshot`]
//! saves and restores them.
//!
//! What the worker makes and reads on the host goes through a few small
//! modules, so that a hostile guest, snapshot or local user meets the same
//! rules everywhere: [`files`] (explicit modes, no symlinks followed, only
//! regular files read), [`sockets`] (private sockets, peer checks,
//! connects that never block), [`capped_log`] (logs that cannot outgrow a
//! cap) and [`log_limit`] (rate-limited log lines).

#![warn(missing_docs)]

pub mod arch;
pub mod bus;
pub mod capped_log;
pub mod control;
pub mod devices;
pub mod files;
pub mod log_limit;
pub mod memory;
pub mod outcome;
pub mod pause;
pub mod snapshot;
pub mod sockets;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_support;
pub mod vcpu;
pub mod vm;

pub use control::ControlHandle;
pub use outcome::Outcome;
pub use vm::{
    DiskConfig, EmptyVm, FsSpec, NetConfig, RestoreConfig, SymlinkPolicy, Vm, VmConfig, VmError,
    VsockConfig,
};
