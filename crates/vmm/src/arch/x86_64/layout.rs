//! Where things live in guest-physical memory. One place, so boot code,
//! the e820 map and the device model agree.

/// GDT with the boot code/data/TSS descriptors.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x520;
/// The Linux zero page (`struct boot_params`), passed in %rsi.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, PD (one page each).
pub const PML4_ADDR: u64 = 0x9000;
/// The identity map's page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// The identity map's page directory (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line at [`CMDLINE_ADDR`], its NUL included.
pub const CMDLINE_MAX: usize = 4096;
/// The MP table lives in the last KiB of base memory, where Linux scans for it.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// End of the low RAM the e820 map reports below 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernel and initrd go above 1 MiB.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: guest RAM never overlaps [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole: RAM past [`MMIO_GAP_START`] resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices: one 4 KiB window each, from here up.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IOAPIC pin handed to virtio devices (0-4 are legacy: timer, serial).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// IOAPIC input pins, each announced in the MP table; virtio devices take
/// the ones from [`VIRTIO_FIRST_IRQ`] on.
pub const IOAPIC_PINS: u32 = 24;
/// Guest physical address of the IOAPIC's registers (for the MP table).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Guest physical address of every local APIC's registers (for the MP table).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS below 4 GiB, outside RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Serial console (COM1) and its interrupt line.
pub const SERIAL_PORT: u16 = 0x3f8;
/// The serial port's interrupt line (IRQ 4, as on a PC).
pub const SERIAL_IRQ: u32 = 4;

/// Guest RAM regions for `mem_bytes` of memory, skipping the MMIO hole.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }
}
