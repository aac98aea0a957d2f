//! Machine-state snapshot against the host's /dev/kvm: no guest code runs,
//! only KVM's get/set ioctls (enough on a PVM host). Skipped, with a note,
//! when /dev/kvm cannot be opened.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_clock_data, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use supermachine_vmm::snapshot::{
    decode, encode, restore_vcpu, restore_vm, save_vcpu, save_vm, MachineState,
};

const MSR_IA32_TSC_AUX: u32 = 0xc000_0103;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const LAPIC_TPR: usize = 0x80;

struct Machine {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
}

/// A VM laid out like the VMM's (TSS, irqchip, PIT) with vCPU 0. With
/// `cpuid`, the vCPU gets the host's supported CPUID (a fresh restore target
/// gets it from the saved state instead).
fn machine(cpuid: bool) -> Option<Machine> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            support::skip_without_kvm(format!("cannot open /dev/kvm: {e}"));
            return None;
        }
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.set_tss_address(0xfffb_d000).expect("KVM_SET_TSS_ADDR");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .expect("KVM_CREATE_PIT2");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    if cpuid {
        let c = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        vcpu.set_cpuid2(&c).expect("KVM_SET_CPUID2");
    }
    Some(Machine {
        _kvm: kvm,
        vm,
        vcpu,
    })
}

fn set_msr(vcpu: &VcpuFd, index: u32, data: u64) -> bool {
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .unwrap();
    match vcpu.set_msrs(&msrs) {
        Ok(1) => true,
        other => {
            eprintln!(
                "note: MSR {index:#x} not accepted by this host's vCPU ({other:?}); not checked"
            );
            false
        }
    }
}

fn get_msr(vcpu: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    match vcpu.get_msrs(&mut msrs) {
        Ok(1) => Some(msrs.as_slice()[0].data),
        _ => None,
    }
}

#[test]
fn save_encode_decode_restore_into_a_fresh_vm() {
    let Some(src) = machine(true) else { return };

    // Distinctive values in every piece we can set without running code.
    let mut regs = src.vcpu.get_regs().unwrap();
    regs.rip = 0x1234_5678;
    regs.rax = 0xdead_beef_cafe_f00d;
    regs.rsp = 0x8000;
    regs.rflags = 0x2;
    src.vcpu.set_regs(&regs).unwrap();

    let mut sregs = src.vcpu.get_sregs().unwrap();
    sregs.cr3 = 0x9000;
    src.vcpu.set_sregs(&sregs).unwrap();

    let mut fpu = src.vcpu.get_fpu().unwrap();
    fpu.fcw = 0x027f;
    fpu.xmm[3] = [0xab; 16];
    src.vcpu.set_fpu(&fpu).unwrap();

    let mut dregs = src.vcpu.get_debug_regs().unwrap();
    dregs.db[0] = 0x4000;
    dregs.db[2] = 0x7777_0000;
    src.vcpu.set_debug_regs(&dregs).unwrap();

    let mut lapic = src.vcpu.get_lapic().unwrap();
    lapic.regs[LAPIC_TPR] = 0x30;
    src.vcpu.set_lapic(&lapic).unwrap();

    let mut events = src.vcpu.get_vcpu_events().unwrap();
    events.nmi.masked = 1;
    src.vcpu.set_vcpu_events(&events).unwrap();

    let tsc_aux = set_msr(&src.vcpu, MSR_IA32_TSC_AUX, 0x5a);
    // Bit 0 clear: kvmclock not enabled, so KVM does not touch guest memory.
    let kvm_time = set_msr(&src.vcpu, MSR_KVM_SYSTEM_TIME_NEW, 0x5000);

    let mut ioapic = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    src.vm.get_irqchip(&mut ioapic).unwrap();
    // SAFETY: chip_id IOAPIC selects the ioapic member of the union.
    let state = unsafe { &mut ioapic.chip.ioapic };
    // Writing a plain-data union member is safe.
    state.redirtbl[5].bits = 0x1_0035;
    src.vm.set_irqchip(&ioapic).unwrap();

    let mut pit = src.vm.get_pit2().unwrap();
    pit.channels[0].count = 0x1234;
    src.vm.set_pit2(&pit).unwrap();

    src.vm
        .set_clock(&kvm_clock_data {
            clock: 1_000_000_000_000,
            ..Default::default()
        })
        .unwrap();

    // Save, through the container, into a fresh VM.
    // An ioctl this host's KVM does not implement (ENOTTY/EINVAL/ENXIO) is
    // reported and the test skipped; any other failure fails it.
    let unsupported = |e: &supermachine_vmm::snapshot::StateError| {
        matches!(
            e.errno(),
            Some(libc::ENOTTY | libc::EINVAL | libc::ENXIO | libc::ENOSYS)
        )
    };
    let vm_state = match save_vm(&src.vm) {
        Ok(s) => s,
        Err(e) if unsupported(&e) => {
            return support::skip_without_kvm(format!("host KVM lacks {e}"))
        }
        Err(e) => panic!("save_vm: {e}"),
    };
    let vcpu_state = match save_vcpu(&src.vcpu) {
        Ok(s) => s,
        Err(e) if unsupported(&e) => {
            return support::skip_without_kvm(format!("host KVM lacks {e}"))
        }
        Err(e) => panic!("save_vcpu: {e}"),
    };
    let state = MachineState {
        vm: vm_state,
        vcpus: vec![vcpu_state],
    };
    let vcpu_state = &state.vcpus[0];
    eprintln!(
        "saved: {} MSRs, {} CPUID leaves, xsave {} words, tsc_khz {:?}",
        vcpu_state.msrs.len(),
        vcpu_state.cpuid.len(),
        vcpu_state.xsave.len(),
        vcpu_state.tsc_khz
    );
    if tsc_aux {
        assert_eq!(vcpu_state.msr(MSR_IA32_TSC_AUX), Some(0x5a));
    }
    if kvm_time {
        assert_eq!(vcpu_state.msr(MSR_KVM_SYSTEM_TIME_NEW), Some(0x5000));
    }
    let blob = encode(&state).unwrap();
    eprintln!("encoded machine state: {} bytes", blob.len());
    let back: MachineState = decode(&blob).expect("decode");
    drop(src);

    let dst = machine(false).unwrap();
    restore_vm(&dst.vm, &back.vm).expect("restore_vm");
    restore_vcpu(&dst.vcpu, &back.vcpus[0]).expect("restore_vcpu");

    let r = dst.vcpu.get_regs().unwrap();
    assert_eq!(
        (r.rip, r.rax, r.rsp, r.rflags),
        (regs.rip, regs.rax, regs.rsp, regs.rflags)
    );
    assert_eq!(dst.vcpu.get_sregs().unwrap().cr3, 0x9000);
    let f = dst.vcpu.get_fpu().unwrap();
    assert_eq!(f.fcw, 0x027f);
    assert_eq!(f.xmm[3], [0xab; 16]);
    let d = dst.vcpu.get_debug_regs().unwrap();
    assert_eq!((d.db[0], d.db[2]), (0x4000, 0x7777_0000));
    assert_eq!(dst.vcpu.get_lapic().unwrap().regs[LAPIC_TPR], 0x30);
    assert_eq!(dst.vcpu.get_vcpu_events().unwrap().nmi.masked, 1);
    assert_eq!(
        dst.vcpu.get_xcrs().unwrap().xcrs[0].value,
        back.vcpus[0].xcrs.xcrs[0].value
    );
    assert_eq!(
        dst.vcpu.get_mp_state().unwrap().mp_state,
        back.vcpus[0].mp_state.mp_state
    );
    if tsc_aux {
        assert_eq!(get_msr(&dst.vcpu, MSR_IA32_TSC_AUX), Some(0x5a));
    }
    if kvm_time {
        assert_eq!(get_msr(&dst.vcpu, MSR_KVM_SYSTEM_TIME_NEW), Some(0x5000));
    }

    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    dst.vm.get_irqchip(&mut chip).unwrap();
    // SAFETY: as above.
    let state = unsafe { &chip.chip.ioapic };
    // SAFETY: every bit pattern is a valid u64; `bits` views the entry whole.
    assert_eq!(unsafe { state.redirtbl[5].bits }, 0x1_0035);
    assert_eq!(dst.vm.get_pit2().unwrap().channels[0].count, 0x1234);
    let clock = dst.vm.get_clock().unwrap().clock;
    assert!(
        (1_000_000_000_000..1_000_000_000_000 + 5_000_000_000).contains(&clock),
        "kvmclock {clock}"
    );
}

/// A benchmark, not a test: it times and prints, asserting nothing but that
/// each step works (which the other tests check). Run it with
/// `cargo test --release -p supermachine-vmm --test snapshot_state -- --ignored --nocapture bench`.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn bench_save_restore_one_vcpu() {
    let Some(m) = machine(true) else { return };
    let iters = 200;
    let (mut save, mut restore, mut enc, mut dec) = (vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for _ in 0..iters {
        let t = Instant::now();
        let s = save_vcpu(&m.vcpu).unwrap();
        save.push(t.elapsed());
        let t = Instant::now();
        let blob = encode(&s).unwrap();
        enc.push(t.elapsed());
        size = blob.len();
        let t = Instant::now();
        let s: supermachine_vmm::snapshot::VcpuState = decode(&blob).unwrap();
        dec.push(t.elapsed());
        let t = Instant::now();
        restore_vcpu(&m.vcpu, &s).unwrap();
        restore.push(t.elapsed());
    }
    let fresh_iters = 20;
    let mut fresh = vec![];
    let s = save_vcpu(&m.vcpu).unwrap();
    for _ in 0..fresh_iters {
        let t = Instant::now();
        let d = machine(false).unwrap();
        restore_vcpu(&d.vcpu, &s).unwrap();
        fresh.push(t.elapsed());
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    for (name, v) in [
        ("save_vcpu", &mut save),
        ("encode", &mut enc),
        ("decode", &mut dec),
        ("restore_vcpu", &mut restore),
        ("new VM+irqchip+PIT+vCPU+restore_vcpu", &mut fresh),
    ] {
        let (m50, m90) = med(v);
        eprintln!(
            "bench {name:>40}: median {m50:>10.1?}  p90 {m90:>10.1?}  (n={})",
            v.len()
        );
    }
    eprintln!("bench one vCPU state: {size} bytes encoded");
}

#[test]
fn msr_list_has_kvmclock_and_puts_tsc_deadline_after_tsc() {
    if Kvm::new().is_err() {
        support::skip_without_kvm("cannot open /dev/kvm");
        return;
    }
    let l = supermachine_vmm::snapshot::msr_index_list().unwrap();
    eprintln!("MSRs to save ({}): {l:x?}", l.len());
    assert!(l.contains(&MSR_KVM_SYSTEM_TIME_NEW), "kvmclock MSR missing");
    let pos = |i: u32| l.iter().position(|&x| x == i);
    if let (Some(tsc), Some(deadline)) = (pos(0x10), pos(0x6e0)) {
        assert!(tsc < deadline);
    }
}
