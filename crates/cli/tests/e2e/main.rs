//! End-to-end tests: the real `supermachine` binary boots real VMs under KVM.
//!
//! On a host with VT-x/AMD-V they run directly. Otherwise (no /dev/kvm, or
//! PVM) this harness re-runs itself inside the lab, a QEMU machine with
//! emulated SVM where /dev/kvm is real. If the lab cannot start, the tests
//! are reported as ignored with the reason — unless SUPERMACHINE_REQUIRE_KVM
//! is set (CI), in which case that is a failure.

mod boot;
mod stdin;
mod util;

use libtest_mimic::{Arguments, Trial};
use std::ffi::OsString;
use supermachine_lab::KvmHost;

fn trials() -> Vec<Trial> {
    let mut all = boot::trials();
    all.extend(stdin::trials());
    all
}

fn main() {
    let mut args = Arguments::from_args();
    // One VM at a time unless asked otherwise: the nested lab is least
    // stall-prone without concurrent VM creation.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let in_lab = std::env::var_os("SUPERMACHINE_IN_LAB").is_some();
    let host = supermachine_lab::detect();
    if in_lab || host == KvmHost::Hardware || args.list {
        libtest_mimic::run(&args, trials()).exit();
    }
    eprintln!(
        "e2e: this host has no hardware virtualization ({host:?}); running the tests in the lab"
    );
    let argv: Vec<OsString> = std::env::args_os().collect();
    // Whatever happens inside, the lab run ends: 30 minutes is ten times
    // what the suite takes there.
    let options = supermachine_lab::LabOptions {
        timeout: Some(std::time::Duration::from_secs(30 * 60)),
        ..Default::default()
    };
    match supermachine_lab::run(&argv, &options) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("e2e: the lab could not run: {e}");
            if std::env::var_os("SUPERMACHINE_REQUIRE_KVM").is_some() {
                std::process::exit(1);
            }
            let ignored = trials()
                .into_iter()
                .map(|t| t.with_ignored_flag(true))
                .collect();
            libtest_mimic::run(&args, ignored).exit();
        }
    }
}
