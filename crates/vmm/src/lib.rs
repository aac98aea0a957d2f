//! The supermachine virtual machine monitor: one KVM virtual machine per
//! worker process, booted from a Linux vmlinux with an initramfs, with a
//! serial console and virtio-mmio block, vsock and rng devices; or restored
//! from a snapshot of one ([`snapshot`], [`Vm::restore`]).
//!
//! The layout follows the machine: `arch/` knows x86_64 boot (and each
//! vCPU's boot state), [`memory`] guest RAM, `devices/` the hardware the
//! guest sees, [`vm`] assembles them, [`vcpu`] runs them, [`snapshot`]
//! saves and restores them.

pub mod arch;
pub mod bus;
pub mod control;
pub mod devices;
pub mod memory;
pub mod outcome;
pub mod pause;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use control::ControlHandle;
pub use outcome::Outcome;
pub use vm::{DiskConfig, EmptyVm, RestoreConfig, Vm, VmConfig, VmError, VsockConfig};
