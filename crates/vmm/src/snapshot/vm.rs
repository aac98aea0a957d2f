//! Save and restore the VM-wide KVM state: the in-kernel interrupt
//! controllers (PIC master, PIC slave, IOAPIC), the PIT, and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{Result, StateError};

/// The VM-wide state. The VM must have been created with
/// `KVM_CREATE_IRQCHIP` and `KVM_CREATE_PIT2`, on save and on restore.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmState {
    /// The primary 8259 PIC (IRQs 0-7).
    pub pic_master: kvm_irqchip,
    /// The secondary 8259 PIC (IRQs 8-15).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC: its pins' routing and state.
    pub ioapic: kvm_irqchip,
    /// The 8254 timer's channels.
    pub pit: kvm_pit_state2,
    /// kvmclock at save time. Restored as is: the guest sees no time pass
    /// while it was snapshotted (wall-clock correction is the agent's job,
    /// after restore).
    pub clock: kvm_clock_data,
}

fn get_chip(vm: &VmFd, chip_id: u32, ioctl: &'static str) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(StateError::ioctl(ioctl))?;
    Ok(chip)
}

/// Save the VM-wide state. All vCPUs must be paused.
pub fn save_vm(vm: &VmFd) -> Result<VmState> {
    Ok(VmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP(PIC master)")?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP(PIC slave)")?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP(IOAPIC)")?,
        pit: vm.get_pit2().map_err(StateError::ioctl("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(StateError::ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Restore the VM-wide state into a VM that has its irqchip and PIT, before
/// any of its vCPUs runs.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<()> {
    // The chip id is part of the saved struct, but a corrupted or hand-made
    // state must not be able to write one chip's state into another.
    for (chip, id, ioctl) in [
        (
            &state.pic_master,
            KVM_IRQCHIP_PIC_MASTER,
            "KVM_SET_IRQCHIP(PIC master)",
        ),
        (
            &state.pic_slave,
            KVM_IRQCHIP_PIC_SLAVE,
            "KVM_SET_IRQCHIP(PIC slave)",
        ),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC, "KVM_SET_IRQCHIP(IOAPIC)"),
    ] {
        let mut chip = *chip;
        chip.chip_id = id;
        vm.set_irqchip(&chip).map_err(StateError::ioctl(ioctl))?;
    }
    vm.set_pit2(&state.pit)
        .map_err(StateError::ioctl("KVM_SET_PIT2"))?;
    // Flags from KVM_GET_CLOCK (TSC_STABLE, REALTIME, HOST_TSC) are not all
    // valid input; KVM_CLOCK_REALTIME would advance the clock by the wall
    // time since the save, which a restore from a baked image must not do
    // implicitly. Restore the bare value.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(StateError::ioctl("KVM_SET_CLOCK"))?;
    Ok(())
}
