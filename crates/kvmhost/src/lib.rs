//! Which kind of KVM this host has: hardware virtualization, PVM, or none.
//!
//! Both the host library (to refuse a host whose /dev/kvm cannot boot its
//! guests, with an error saying what to do) and the lab (to decide whether
//! a command runs directly or inside an emulated machine) ask this; it is
//! its own crate so the library does not depend on the lab.
//!
//! ```
//! use supermachine_kvmhost::{detect, explain, KvmHost};
//! let host = detect();
//! assert!(matches!(host, KvmHost::Hardware | KvmHost::Pvm | KvmHost::Missing));
//! assert!(!explain(host).is_empty());
//! ```

#![warn(missing_docs)]

use std::path::Path;

/// The kind of /dev/kvm this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmHost {
    /// Real hardware virtualization (Intel VMX or AMD SVM): guests run directly.
    Hardware,
    /// /dev/kvm exists but cannot run an ordinary guest kernel: PVM
    /// (`kvm_pvm`, which wants PVM-enlightened guests), or a CPU that
    /// shows neither svm nor vmx.
    Pvm,
    /// No /dev/kvm at all.
    Missing,
}

/// Classifies this host's /dev/kvm.
pub fn detect() -> KvmHost {
    if !Path::new("/dev/kvm").exists() {
        return KvmHost::Missing;
    }
    // kvm_pvm registers a /dev/kvm too, but runs only PVM guests; its
    // module directory is the reliable sign (the CPU flags may even say svm
    // on a host whose kvm_amd is not loaded).
    if Path::new("/sys/module/kvm_pvm").exists() {
        return KvmHost::Pvm;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if has_virt_flag(&cpuinfo) {
        KvmHost::Hardware
    } else {
        KvmHost::Pvm
    }
}

fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "svm" || f == "vmx")
}

/// One paragraph for users about what `host` means for supermachine.
pub fn explain(host: KvmHost) -> &'static str {
    match host {
        KvmHost::Hardware => {
            "/dev/kvm is hardware virtualization (VMX/SVM): supermachine runs guests directly."
        }
        KvmHost::Pvm => {
            "/dev/kvm here is not hardware virtualization: it is PVM (the kvm_pvm module) or \
             the CPU shows neither svm nor vmx. PVM runs only PVM-enlightened guest kernels, \
             so supermachine cannot boot its guests here. Use a machine with VT-x/AMD-V (or \
             nested virtualization enabled); tests still run here through the lab \
             (`cargo xtask lab -- <cmd>`), a QEMU-emulated machine with AMD SVM, slowly."
        }
        KvmHost::Missing => {
            "There is no /dev/kvm: load kvm_intel or kvm_amd (and enable VT-x/AMD-V in the \
             firmware), or use a VM with nested virtualization. Tests still run through the \
             lab (`cargo xtask lab -- <cmd>`), a QEMU-emulated machine, slowly."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_flags() {
        assert!(has_virt_flag("processor\t: 0\nflags\t\t: fpu svm sse\n"));
        assert!(has_virt_flag("flags\t\t: vmx\n"));
        assert!(!has_virt_flag("flags\t\t: fpu svmx sse\nbugs\t\t: svm\n"));
    }
}
