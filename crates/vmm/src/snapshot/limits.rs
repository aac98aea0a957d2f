//! What a restore takes from a snapshot it did not make itself.
//!
//! A snapshot directory may come from anywhere (another host, another
//! user, a download), and its state file may ask for anything its
//! checksums cover. Before any memory is mapped or vCPU made, the machine
//! it describes must be one this VMM makes and this host can carry:
//!
//! - 1 to [`MAX_VCPUS`] vCPUs, and no more than KVM allows on this host
//!   nor [`VCPUS_PER_HOST_CPU`] per host CPU;
//! - no more guest memory than the host has RAM;
//! - guest memory laid out exactly as a boot of that size lays it out,
//!   stored back to back in the memory file.

use super::bundle::SnapshotState;
use super::memory::RegionLayout;
use crate::arch::x86_64::layout::ram_regions;

/// The most vCPUs a machine of ours has (the MP table's limit we keep).
pub const MAX_VCPUS: usize = 64;
/// vCPUs allowed per host CPU. More than this many runnable vCPUs per
/// core only time-slice each other (a guest's spinlocks and timers fare
/// badly), and a snapshot that asks for hundreds of threads on a small
/// host is refused rather than run.
pub const VCPUS_PER_HOST_CPU: usize = 4;

/// What this host can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// vCPUs per VM KVM accepts here (`KVM_CAP_MAX_VCPUS`).
    pub kvm_max_vcpus: usize,
    /// CPUs online on this host.
    pub host_cpus: usize,
    /// This host's RAM in MiB (all of it, not what is free).
    pub ram_mib: u64,
}

impl HostLimits {
    /// This host's limits, asking KVM through `vm`.
    pub fn of_this_host(vm: &kvm_ioctls::VmFd) -> HostLimits {
        let kvm_max = vm.check_extension_raw(kvm_bindings::KVM_CAP_MAX_VCPUS.into());
        // SAFETY: sysconf takes a plain integer and touches no memory of ours.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        // SAFETY: sysinfo is plain data; all-zero is a valid value.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live sysinfo the call only fills in.
        let ram = if unsafe { libc::sysinfo(&mut info) } == 0 {
            (info.totalram as u64).saturating_mul(info.mem_unit.max(1) as u64)
        } else {
            u64::MAX
        };
        HostLimits {
            // Before KVM_CAP_MAX_VCPUS existed, KVM documented 4 as the floor
            // (KVM_CAP_NR_VCPUS); a kernel that answers nothing gets that.
            kvm_max_vcpus: if kvm_max > 0 { kvm_max as usize } else { 4 },
            host_cpus: cpus.max(1) as usize,
            ram_mib: ram >> 20,
        }
    }

    /// The most vCPUs a restore may make here, and why that many.
    fn max_vcpus(&self) -> (usize, String) {
        let per_cpu = self.host_cpus.saturating_mul(VCPUS_PER_HOST_CPU);
        [
            (MAX_VCPUS, "the most this VMM makes".to_string()),
            (
                self.kvm_max_vcpus,
                "the most this host's KVM allows".to_string(),
            ),
            (
                per_cpu,
                format!(
                    "{VCPUS_PER_HOST_CPU} per CPU of this host's {}",
                    self.host_cpus
                ),
            ),
        ]
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((MAX_VCPUS, String::new()))
    }
}

/// Why a restore here refuses to make the machine a snapshot describes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The state lists no vCPU at all.
    #[error("the snapshot has no vCPU")]
    NoVcpus,
    /// More vCPUs than this host takes.
    #[error("the snapshot has {saved} vCPUs; a restore here may make at most {max} ({why})")]
    TooManyVcpus {
        /// vCPUs in the snapshot.
        saved: usize,
        /// The most a restore here may make.
        max: usize,
        /// Which limit `max` is, in words.
        why: String,
    },
    /// The guest has more memory than this host has RAM.
    #[error(
        "the snapshot's guest has {mib} MiB of memory, more than this host's {host_mib} MiB of RAM"
    )]
    TooMuchMemory {
        /// Guest memory in the snapshot, in MiB.
        mib: u64,
        /// This host's RAM, in MiB.
        host_mib: u64,
    },
    /// The memory layout is not [`layout_for`] the saved size.
    #[error(
        "the snapshot's memory layout ({found:?}) is not the one this VMM makes for {mib} MiB \
         (a state file from elsewhere, or damaged)"
    )]
    Layout {
        /// Guest memory in the snapshot, in MiB.
        mib: u64,
        /// The layout the state file has.
        found: Vec<RegionLayout>,
    },
}

/// Whether a restore here may make the machine `state` describes.
pub fn check(state: &SnapshotState, host: &HostLimits) -> Result<(), Refused> {
    check_machine(
        state.machine.vcpus.len(),
        state.memory_mib,
        &state.memory,
        host,
    )
}

/// [`check`] of a machine of `vcpus` vCPUs and `memory_mib` MiB whose
/// memory file is laid out as `memory`.
pub fn check_machine(
    vcpus: usize,
    memory_mib: u64,
    memory: &[RegionLayout],
    host: &HostLimits,
) -> Result<(), Refused> {
    if vcpus == 0 {
        return Err(Refused::NoVcpus);
    }
    let (max, why) = host.max_vcpus();
    if vcpus > max {
        return Err(Refused::TooManyVcpus {
            saved: vcpus,
            max,
            why,
        });
    }
    if memory_mib > host.ram_mib {
        return Err(Refused::TooMuchMemory {
            mib: memory_mib,
            host_mib: host.ram_mib,
        });
    }
    if memory != layout_for(memory_mib) {
        return Err(Refused::Layout {
            mib: memory_mib,
            found: memory.to_vec(),
        });
    }
    Ok(())
}

/// The memory file layout a snapshot of a `mib` MiB guest has: its RAM
/// regions in guest order, back to back in the file.
pub fn layout_for(mib: u64) -> Vec<RegionLayout> {
    let mut offset = 0;
    ram_regions(mib << 20)
        .into_iter()
        .map(|(guest_addr, len)| {
            let region = RegionLayout {
                guest_addr,
                len,
                file_offset: offset,
            };
            offset += len;
            region
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        kvm_max_vcpus: 240,
        host_cpus: 2,
        ram_mib: 8192,
    };

    #[test]
    fn a_machine_this_vmm_makes_on_this_host_is_taken() {
        assert_eq!(check_machine(2, 256, &layout_for(256), &HOST), Ok(()));
        // Above the 32-bit hole: two regions.
        assert_eq!(check_machine(8, 4096, &layout_for(4096), &HOST), Ok(()));
        assert_eq!(layout_for(4096).len(), 2);
    }

    #[test]
    fn vcpus_are_capped_by_the_host_kvm_and_the_vmm() {
        assert_eq!(
            check_machine(0, 256, &layout_for(256), &HOST),
            Err(Refused::NoVcpus)
        );
        let err = check_machine(9, 256, &layout_for(256), &HOST).unwrap_err();
        assert!(
            matches!(
                &err,
                Refused::TooManyVcpus {
                    saved: 9,
                    max: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("4 per CPU"), "{err}");
        let big = HostLimits {
            host_cpus: 1024,
            ..HOST
        };
        let err = check_machine(65, 256, &layout_for(256), &big).unwrap_err();
        assert!(
            matches!(err, Refused::TooManyVcpus { max: 64, .. }),
            "{err}"
        );
        let small_kvm = HostLimits {
            kvm_max_vcpus: 4,
            ..big
        };
        let err = check_machine(5, 256, &layout_for(256), &small_kvm).unwrap_err();
        assert!(err.to_string().contains("KVM"), "{err}");
    }

    #[test]
    fn memory_is_capped_by_host_ram_and_must_be_laid_out_as_ours() {
        let err = check_machine(1, 1 << 40, &layout_for(256), &HOST).unwrap_err();
        assert!(matches!(err, Refused::TooMuchMemory { .. }), "{err}");
        let mut moved = layout_for(256);
        moved[0].guest_addr = 0x1000;
        assert!(matches!(
            check_machine(1, 256, &moved, &HOST),
            Err(Refused::Layout { .. })
        ));
        // A layout for more memory than the state says.
        assert!(matches!(
            check_machine(1, 256, &layout_for(512), &HOST),
            Err(Refused::Layout { .. })
        ));
    }
}
