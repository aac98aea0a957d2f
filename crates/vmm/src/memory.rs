//! Guest RAM: fresh anonymous memory for a cold boot, laid out around the
//! 32-bit MMIO hole, and handing any guest memory (fresh, or a snapshot's
//! file mapping from `snapshot::memory`) to KVM as memory slots.

use crate::arch::x86_64::layout::ram_regions;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Guest memory could not be mapped or handed to KVM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host would not map guest memory (or give a region's address).
    #[error("guest memory of {mib} MiB: {reason}")]
    Map {
        /// The guest memory asked for, in MiB.
        mib: u64,
        /// vm-memory's error.
        reason: String,
    },
    /// KVM refused a memory slot.
    #[error("guest memory slot {slot}: KVM_SET_USER_MEMORY_REGION: {source}")]
    Register {
        /// The slot: the region's index in guest memory.
        slot: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// Fresh, zeroed guest memory of `mib` MiB, registered with the VM.
pub fn create(vm: &VmFd, mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = mib << 20;
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map {
        mib,
        reason: e.to_string(),
    })?;
    register(vm, &mem, true)?;
    Ok(mem)
}

/// Hands every region of `mem` to KVM as a memory slot.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, huge_pages: bool) -> Result<(), MemoryError> {
    let mib = mem.iter().map(|r| r.len()).sum::<u64>() >> 20;
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Map {
                mib,
                reason: e.to_string(),
            })?;
        if huge_pages {
            // Transparent huge pages where the host allows them: one 2 MiB
            // fault instead of 512 small ones, each a VM exit to the host's
            // page-fault path (QEMU does the same). Advice only; failure is
            // fine. (Not for a restored snapshot: its pages come from the
            // page cache, shared copy-on-write.)
            // SAFETY: advising a mapping we own, over exactly its length.
            unsafe { libc::madvise(host_addr.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the Vm
        // keeps until the process ends.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|source| {
            MemoryError::Register {
                slot: slot as u32,
                source,
            }
        })?;
    }
    Ok(())
}
