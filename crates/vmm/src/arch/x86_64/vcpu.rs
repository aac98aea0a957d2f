//! A vCPU as firmware would hand it to a Linux kernel on a cold boot:
//! CPUID, the boot MSRs, the LAPIC's LINT pins and a clean FPU on every
//! vCPU; on the boot vCPU also long mode, paging on the identity tables
//! and the registers of the kernel's 64-bit entry. (A restored vCPU gets
//! all of this from its snapshot instead; see `snapshot::vcpu`.)

use super::{cpuid, msrs, regs};
use kvm_bindings::{kvm_lapic_state, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A vCPU could not be set up for a cold boot.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// A KVM ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Kvm {
        /// The ioctl's name, e.g. `"KVM_SET_CPUID2"`.
        ioctl: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The boot MSR list did not fit a KVM buffer.
    #[error("building the boot MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

fn kvm<T>(ioctl: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuSetupError> {
    r.map_err(|source| VcpuSetupError::Kvm { ioctl, source })
}

/// What this host's KVM offers every vCPU, asked once per machine.
pub struct HostCpu {
    supported_cpuid: CpuId,
    tsc_deadline: bool,
}

impl HostCpu {
    /// Asks KVM for the CPUID it supports and whether it emulates the LAPIC's
    /// TSC-deadline timer.
    pub fn query(kvm_fd: &Kvm) -> Result<HostCpu, VcpuSetupError> {
        Ok(HostCpu {
            supported_cpuid: kvm(
                "KVM_GET_SUPPORTED_CPUID",
                kvm_fd.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
            )?,
            tsc_deadline: kvm_fd.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        })
    }
}

/// Sets up vCPU `id` of `count` for a cold boot. `kernel_entry` is given
/// for the boot vCPU only: the others wait for the kernel's INIT-SIPI.
pub fn configure_for_boot(
    fd: &VcpuFd,
    host: &HostCpu,
    id: u8,
    count: u8,
    kernel_entry: Option<u64>,
) -> Result<(), VcpuSetupError> {
    let mut cpuid = host.supported_cpuid.clone();
    cpuid::for_vcpu(&mut cpuid, id, count, host.tsc_deadline);
    kvm("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
    let msrs = msrs::boot_msrs().map_err(VcpuSetupError::MsrList)?;
    kvm("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
    let mut lapic = kvm("KVM_GET_LAPIC", fd.get_lapic())?;
    configure_lint(&mut lapic);
    kvm("KVM_SET_LAPIC", fd.set_lapic(&lapic))?;
    kvm("KVM_SET_FPU", fd.set_fpu(&regs::boot_fpu()))?;
    if let Some(entry) = kernel_entry {
        let sregs = kvm("KVM_GET_SREGS", fd.get_sregs())?;
        kvm("KVM_SET_SREGS", fd.set_sregs(&regs::long_mode_sregs(sregs)))?;
        kvm("KVM_SET_REGS", fd.set_regs(&regs::boot_regs(entry)))?;
    }
    Ok(())
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as _;
    }
}

/// LINT0 delivers the legacy PIC (ExtINT), LINT1 delivers NMIs, as firmware
/// would leave them.
pub fn configure_lint(lapic: &mut kvm_lapic_state) {
    set_delivery_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvt(lapic: &kvm_lapic_state, reg: usize) -> u32 {
        u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[reg + i] as u8))
    }

    #[test]
    fn lint_pins_get_extint_and_nmi_and_keep_their_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // Masked (bit 16) with vector 0x20, in fixed mode.
        for reg in [APIC_LVT0, APIC_LVT1] {
            for (i, b) in 0x0001_0020u32.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        configure_lint(&mut lapic);
        assert_eq!(lvt(&lapic, APIC_LVT0), 0x0001_0720);
        assert_eq!(lvt(&lapic, APIC_LVT1), 0x0001_0420);
    }
}
