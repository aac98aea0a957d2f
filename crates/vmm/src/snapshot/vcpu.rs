//! Save and restore one vCPU's KVM state.
//!
//! The order of the ioctls matters in both directions (KVM documents little
//! of it; Firecracker and QEMU learned it the hard way):
//!
//! Save:
//! - `KVM_GET_MP_STATE` first: it runs `kvm_apic_accept_events()`, which may
//!   change LAPIC and vCPU state that the later reads must see.
//! - `KVM_GET_LAPIC` may itself update LAPIC state before returning it.
//! - `KVM_GET_VCPU_EVENTS` last: the other reads may change pending events.
//!
//! Restore:
//! - `KVM_SET_CPUID2` first: which MSRs exist, the XSAVE layout and the BSP
//!   check behind `KVM_SET_MP_STATE` depend on it.
//! - `KVM_SET_REGS` clears pending exceptions, so it comes before
//!   `KVM_SET_VCPU_EVENTS`, which restores them.
//! - `KVM_SET_SREGS` restores the APIC base MSR, so it comes before
//!   `KVM_SET_LAPIC`.
//! - `KVM_SET_LAPIC` comes before `KVM_SET_MSRS`: the TSC-deadline MSR only
//!   takes when the LAPIC is configured; and within the MSRs,
//!   `IA32_TSC_DEADLINE` is written after `IA32_TSC`.
//! - `KVM_SET_FPU` before `KVM_SET_XSAVE` (XSAVE is the superset and wins).
//! - `KVM_SET_VCPU_EVENTS` last; then `KVM_KVMCLOCK_CTRL` tells a guest using
//!   kvmclock that it was paused, so its watchdogs do not fire.
//!
//! All of this must run while no vCPU of the VM is running.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::{Result, StateError};

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`: must be restored after `IA32_TSC` and the LAPIC.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Architectural MSRs a guest may rely on that some hosts leave out of
/// `KVM_GET_MSR_INDEX_LIST` (PVM, for one, omits `IA32_TSC_AUX`, which
/// Linux uses for the vDSO's getcpu). Added to the list; each is still saved
/// only if the vCPU accepts it.
#[rustfmt::skip]
const ARCH_MSRS: &[u32] = &[
    0x48,        // IA32_SPEC_CTRL
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x2ff,       // IA32_MTRR_DEF_TYPE
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, // MTRR phys base/mask 0-3
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f, // MTRR phys base/mask 4-7
    0x250, 0x258, 0x259, // MTRR fix 64K, 16K
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, // MTRR fix 4K
    0xc000_0103, // IA32_TSC_AUX
];

/// Words in the legacy 4 KiB `kvm_xsave` region.
const XSAVE_LEGACY_WORDS: usize = 1024;

/// The legacy FPU/SSE state (`KVM_GET_FPU`). `kvm_fpu` has no serde impl in
/// kvm-bindings, hence this mirror. XSAVE carries the same state and is
/// restored after it, so this is belt and braces for hosts without XSAVE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// The x87 registers ST0-ST7, 16 bytes each (80 bits used).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// x87 tag word, abridged (one bit per register, as FXSAVE stores it).
    pub ftwx: u8,
    /// Opcode of the last x87 instruction.
    pub last_opcode: u16,
    /// Address of the last x87 instruction.
    pub last_ip: u64,
    /// Address of the last x87 instruction's memory operand.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM holds for one x86_64 vCPU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was given (restored first).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Whether the vCPU runs, halts or waits for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER and the APIC base.
    pub sregs: kvm_sregs,
    /// The legacy FPU/SSE state.
    pub fpu: FpuState,
    /// The XSAVE area as u32 words: the 4 KiB legacy region, plus any
    /// `KVM_CAP_XSAVE2` tail (empty unless the VMM enabled e.g. AMX).
    pub xsave: Vec<u32>,
    /// Extended control registers (XCR0: which XSAVE features are on).
    pub xcrs: kvm_xcrs,
    /// Debug registers DR0-DR3, DR6 and DR7.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// Every MSR of the host's `KVM_GET_MSR_INDEX_LIST` this vCPU accepted
    /// (kvmclock's included), `IA32_TSC_DEADLINE` last.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs (restored last).
    pub vcpu_events: kvm_vcpu_events,
    /// The guest TSC frequency, if KVM reports it. A restore on a host with
    /// another TSC frequency scales the guest TSC to this.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// The saved value of one MSR.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }
}

/// The MSRs KVM can save and restore on this host (`KVM_GET_MSR_INDEX_LIST`:
/// the ones it virtualises plus the ones it emulates, kvmclock's among them),
/// read once per process.
pub fn msr_index_list() -> Result<&'static [u32]> {
    static LIST: OnceLock<std::result::Result<Vec<u32>, String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
        let list = kvm.get_msr_index_list().map_err(|e| e.to_string())?;
        let mut v = list.as_slice().to_vec();
        for &extra in ARCH_MSRS {
            if !v.contains(&extra) {
                v.push(extra);
            }
        }
        // Keep the host's order, but move IA32_TSC_DEADLINE to the end so
        // it is written after IA32_TSC (and, by then, the LAPIC).
        if let Some(pos) = v.iter().position(|&i| i == MSR_IA32_TSC_DEADLINE) {
            let i = v.remove(pos);
            v.push(i);
        }
        Ok(v)
    })
    .as_ref()
    .map(|v| v.as_slice())
    .map_err(|e| StateError::MsrIndexList(e.clone()))
}

fn fam(what: &'static str) -> impl FnOnce(vmm_sys_util::fam::Error) -> StateError {
    move |source| StateError::Fam { what, source }
}

/// Read every MSR of `indices` the vCPU accepts. `KVM_GET_MSRS` stops at the
/// first MSR it refuses and returns how many it read; the refused one is
/// skipped (it depends on CPUID or host features this vCPU does not have)
/// and the rest are read on.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let mut msrs = Msrs::new(chunk.len()).map_err(fam("MSR"))?;
        for (e, &index) in msrs.as_mut_slice().iter_mut().zip(chunk) {
            e.index = index;
        }
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(StateError::ioctl("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < chunk.len() {
            tracing::trace!(msr = chunk[n], "vCPU does not accept MSR; not saved");
            rest = &rest[n + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

fn write_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<()> {
    for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(fam("MSR"))?;
        let n = vcpu
            .set_msrs(&msrs)
            .map_err(StateError::ioctl("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            return Err(StateError::MsrRejected {
                index: chunk[n].index,
                data: chunk[n].data,
            });
        }
    }
    Ok(())
}

/// Save one vCPU. The vCPU must not be running (pause it first).
///
/// XSAVE is read with `KVM_GET_XSAVE` (4 KiB), which holds all the state of
/// a guest unless the VMM opted into larger XSAVE features (AMX) with
/// `arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)`; this VMM does not.
pub fn save_vcpu(vcpu: &VcpuFd) -> Result<VcpuState> {
    let mp_state = vcpu
        .get_mp_state()
        .map_err(StateError::ioctl("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(StateError::ioctl("KVM_GET_REGS"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(StateError::ioctl("KVM_GET_SREGS"))?;
    let fpu = vcpu.get_fpu().map_err(StateError::ioctl("KVM_GET_FPU"))?;
    let xsave = vcpu
        .get_xsave()
        .map_err(StateError::ioctl("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(StateError::ioctl("KVM_GET_XCRS"))?;
    let debug_regs = vcpu
        .get_debug_regs()
        .map_err(StateError::ioctl("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu
        .get_lapic()
        .map_err(StateError::ioctl("KVM_GET_LAPIC"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok().filter(|&k| k != 0);
    let mut cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(StateError::ioctl("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    // KVM may pad the list with all-zero entries; they are not leaves.
    cpuid.retain(|e| !(e.function == 0 && e.index == 0 && e.flags == 0 && e.eax == 0));
    let msrs = read_msrs(vcpu, msr_index_list()?)?;
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(StateError::ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        fpu: FpuState::from(&fpu),
        xsave: xsave.region.to_vec(),
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
        tsc_khz,
    })
}

/// Restore one vCPU, created fresh (`KVM_CREATE_VCPU`) in a VM whose
/// irqchip already exists and whose VM-level state is restored (or is
/// restored before any vCPU runs). See the module docs for the order.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<()> {
    if state.xsave.len() < XSAVE_LEGACY_WORDS {
        return Err(StateError::XsaveTooSmall {
            words: state.xsave.len(),
        });
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(fam("CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(StateError::ioctl("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        // Only scale when the host differs by more than 250 ppm (TSC
        // calibration differs slightly from boot to boot).
        let here = vcpu.get_tsc_khz().unwrap_or(0);
        if u64::from(here.abs_diff(khz)) * 4000 > u64::from(khz) {
            vcpu.set_tsc_khz(khz)
                .map_err(|source| StateError::TscRate {
                    saved_khz: khz,
                    host_khz: here,
                    source,
                })?;
        }
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(StateError::ioctl("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs)
        .map_err(StateError::ioctl("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(StateError::ioctl("KVM_SET_SREGS"))?;
    vcpu.set_fpu(&kvm_fpu::from(&state.fpu))
        .map_err(StateError::ioctl("KVM_SET_FPU"))?;
    if state.xsave.len() == XSAVE_LEGACY_WORDS {
        let mut xs = kvm_xsave::default();
        xs.region.copy_from_slice(&state.xsave);
        // SAFETY: `xs` is a full legacy kvm_xsave with no trailing area, and
        // the kernel reads exactly size_of::<kvm_xsave>() from it.
        unsafe { vcpu.set_xsave(&xs) }.map_err(StateError::ioctl("KVM_SET_XSAVE"))?;
    } else {
        let extra = &state.xsave[XSAVE_LEGACY_WORDS..];
        let mut xs = Xsave::from_entries(extra).map_err(fam("XSAVE"))?;
        // SAFETY: only the fixed header is written, through the wrapper's
        // own accessor; the entry count it keeps is left as made.
        unsafe { xs.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(&state.xsave[..XSAVE_LEGACY_WORDS]);
        // SAFETY: the FAM wrapper owns the header plus `extra.len()` words,
        // which is the size KVM_SET_XSAVE reads with KVM_CAP_XSAVE2 enabled.
        unsafe { vcpu.set_xsave2(&xs) }.map_err(StateError::ioctl("KVM_SET_XSAVE"))?;
    }
    vcpu.set_xcrs(&state.xcrs)
        .map_err(StateError::ioctl("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(StateError::ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(StateError::ioctl("KVM_SET_LAPIC"))?;
    // TSC before TSC-deadline, whatever order the state holds them in.
    let (deadline, others): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = state
        .msrs
        .iter()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    write_msrs(vcpu, &others)?;
    write_msrs(vcpu, &deadline)?;
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(StateError::ioctl("KVM_SET_VCPU_EVENTS"))?;
    // EINVAL when the guest has not enabled kvmclock: nothing to tell then.
    let _ = vcpu.kvmclock_ctrl();
    Ok(())
}
