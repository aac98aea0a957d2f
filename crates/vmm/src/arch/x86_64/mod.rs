//! Everything x86_64-specific about booting a guest.

pub mod boot;
pub mod cpuid;
pub mod host;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod regs;

use kvm_bindings::kvm_lapic_state;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

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
