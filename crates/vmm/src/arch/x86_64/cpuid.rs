//! CPUID as the guest sees it: what KVM supports on this host, with the
//! topology fields rewritten per vCPU so APIC ids match the MP table.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` logical CPUs.
fn id_bits(n: u8) -> u32 {
    (n.max(1) as u32).next_power_of_two().trailing_zeros()
}

/// Rewrites `cpuid` for vCPU `id` of `count`: one socket, `count` cores,
/// one thread each. `tsc_deadline`: KVM's in-kernel LAPIC emulates the
/// TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER), which
/// KVM_GET_SUPPORTED_CPUID does not report; advertising it spares the guest
/// a LAPIC timer calibration.
pub fn for_vcpu(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((count as u32) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (id_bits(count), count as u32, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = id as u32;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_topology_follow_the_vcpu() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        for_vcpu(&mut cpuid, 3, 4, true);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x1234);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!((s[1].eax, s[1].ebx, s[1].edx), (2, 4, 3));
    }
}
