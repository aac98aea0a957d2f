//! End-to-end tests: the real `supermachine` binary boots real VMs under KVM.
//!
//! On a host with VT-x/AMD-V they run directly. Otherwise (no /dev/kvm, or
//! PVM) this harness re-runs itself inside the lab, a QEMU machine with
//! emulated SVM where /dev/kvm is real. If the lab cannot start, the tests
//! are reported as ignored with the reason — unless SUPERMACHINE_REQUIRE_KVM
//! is set (CI), in which case that is a failure.

mod api;
mod boot;
mod cli_vm;
mod debian;
mod exec;
mod files;
mod images;
mod oci_layout;
mod pool;
mod registry;
mod snapshot;
mod stdin;
mod util;

use libtest_mimic::{Arguments, Trial};
use std::ffi::OsString;
use supermachine_lab::KvmHost;

fn trials() -> Vec<Trial> {
    let mut all = boot::trials();
    all.extend(stdin::trials());
    all.extend(exec::trials());
    all.extend(files::trials());
    all.extend(cli_vm::trials());
    all.extend(images::trials());
    all.extend(debian::trials());
    all.extend(snapshot::trials());
    all.extend(pool::trials());
    all
}

/// Builds the cached Debian test image on the host (it needs the network,
/// which the lab has not) when the Debian test is selected.
fn prepare_host(args: &Arguments) {
    let selected = |name: &str| {
        args.filter.as_deref().is_none_or(|f| {
            if args.exact {
                name == f
            } else {
                name.contains(f)
            }
        }) && !args.skip.iter().any(|s| name.contains(s.as_str()))
    };
    if !args.list && selected(debian::TRIAL) {
        if let Err(e) = debian::prepare() {
            // The test itself reports it.
            eprintln!("e2e: could not prepare the Debian test image: {e}");
        }
    }
}

fn main() {
    if let Some(snapshot) = std::env::var_os(pool::CHILD_ENV) {
        pool::owner_child(&snapshot.to_string_lossy());
    }
    let mut args = Arguments::from_args();
    // One VM at a time unless asked otherwise: the nested lab is least
    // stall-prone without concurrent VM creation.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let in_lab = std::env::var_os("SUPERMACHINE_IN_LAB").is_some();
    if !in_lab {
        prepare_host(&args);
    }
    let host = supermachine_lab::detect();
    if in_lab || host == KvmHost::Hardware || args.list {
        libtest_mimic::run(&args, trials()).exit();
    }
    eprintln!(
        "e2e: this host has no hardware virtualization ({host:?}); running the tests in the lab"
    );
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The lab very occasionally fails as a whole: it freezes (QEMU's
    // software SVM with KVM nested inside it: both emulated CPUs spin and
    // nothing inside progresses), or its own kernel crashes under heavy
    // nested load (a stack overflow in its KVM, seen once while streaming
    // 1 GiB). The suite takes about five minutes there (half of it the
    // 1 GiB round trip), so a lab run that lasts 15 minutes is frozen: say
    // so and run the suite again, as after a crashed lab.
    let options = supermachine_lab::LabOptions {
        cpus: lab_cpus(),
        timeout: Some(std::time::Duration::from_secs(15 * 60)),
        ..Default::default()
    };
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match supermachine_lab::run(&argv, &options) {
            Ok(util::LAB_WENT_BAD) if attempt < ATTEMPTS => {
                eprintln!(
                    "e2e: LAB WENT BAD (attempt {attempt} of {ATTEMPTS}): a command stalled twice in it"
                );
                eprintln!("e2e: running the suite again in a fresh lab");
            }
            Ok(code) => std::process::exit(code),
            Err(supermachine_lab::LabError::Timeout { secs, console }) if attempt < ATTEMPTS => {
                let tail: Vec<&str> = console.lines().rev().take(10).collect();
                eprintln!(
                    "e2e: STALL: the lab made no progress for {secs}s (attempt {attempt} of {ATTEMPTS}); its console ended with:"
                );
                for line in tail.into_iter().rev() {
                    eprintln!("  | {line}");
                }
                eprintln!("e2e: running the suite again in a fresh lab");
            }
            Err(e @ supermachine_lab::LabError::NoExitCode { .. }) if attempt < ATTEMPTS => {
                eprintln!("e2e: LAB CRASH (attempt {attempt} of {ATTEMPTS}): {e}");
                eprintln!("e2e: running the suite again in a fresh lab");
            }
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
    unreachable!("every attempt exits or continues");
}

/// Lab vCPUs: one by default (the freezes above look like a race in QEMU's
/// multi-threaded emulation), `SUPERMACHINE_LAB_CPUS` to change it.
fn lab_cpus() -> u32 {
    std::env::var("SUPERMACHINE_LAB_CPUS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}
