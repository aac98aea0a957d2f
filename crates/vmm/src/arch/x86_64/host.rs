//! Facts about the host CPU that change how we must treat the guest.

/// Whether this process runs under QEMU's software emulator (TCG), as in
/// the lab: its hypervisor CPUID leaf says "TCGTCGTCGTCG".
pub fn under_qemu_tcg() -> bool {
    let hv = core::arch::x86_64::__cpuid(1);
    if hv.ecx & (1 << 31) == 0 {
        return false;
    }
    let leaf = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&leaf.edx.to_le_bytes());
    &sig == b"TCGTCGTCGTCG"
}

/// The task register's type as a restore must set it.
///
/// KVM on AMD reports TR as busy (type 11) whatever the VMCB holds, and a
/// restore writes that back. Hardware ignores the busy bit in the TR cache,
/// but QEMU's emulated SVM (the lab) checks user-space port I/O against the
/// TSS only while TR's cached type is "available" (9), as its own `ltr`
/// leaves it: a restored guest's permitted `outb` would then fault. Only
/// under QEMU is the bit cleared; Intel's VM entry requires type 11.
pub fn restored_tr_type(saved: u8, under_tcg: bool) -> u8 {
    if under_tcg && saved == 11 {
        9
    } else {
        saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_tr_under_tcg_changes() {
        assert_eq!(restored_tr_type(11, true), 9);
        assert_eq!(restored_tr_type(11, false), 11);
        assert_eq!(restored_tr_type(9, true), 9);
    }
}
