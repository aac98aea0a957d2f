//! The supermachine virtual machine monitor: one KVM virtual machine per
//! worker process, booted from a Linux vmlinux with an initramfs, with a
//! serial console and virtio-mmio block, vsock and rng devices.
//!
//! The layout follows the machine: `arch/` knows x86_64 boot, `devices/` the
//! hardware the guest sees, [`vm`] assembles them, [`vcpu`] runs them.

pub mod arch;
pub mod bus;
pub mod devices;
pub mod outcome;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use outcome::Outcome;
pub use vm::{DiskConfig, Vm, VmConfig, VmError, VsockConfig};
