//! End-to-end tests: the real `supermachine` binary boots real VMs under KVM.
//!
//! On a host with VT-x/AMD-V they run directly. Otherwise (no /dev/kvm, or
//! PVM) this harness re-runs itself inside the lab, a QEMU machine with
//! emulated SVM where /dev/kvm is real. If the lab cannot start, the tests
//! are reported as ignored with the reason — unless SUPERMACHINE_REQUIRE_KVM
//! is set (CI), in which case that is a failure.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod boot;
mod cli_vm;
mod debian;
mod exec;
mod files;
mod images;
mod mounts;
mod network;
mod oci_layout;
mod pool;
mod ports;
mod progress;
mod registry;
mod snapshot;
mod stdin;
mod util;
mod volumes;

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
    all.extend(mounts::trials());
    all.extend(ports::trials());
    all.extend(network::trials());
    all.extend(volumes::trials());
    progress::without_skipped(all)
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
    std::process::exit(run_in_lab(&args));
}

/// Lab attempts: a lab that fails as a whole (frozen, crashed, or gone bad
/// under a stalled command) is replaced by a fresh one that runs only the
/// tests not finished yet (see [`progress`]).
const ATTEMPTS: u32 = 4;

/// Runs the suite in the lab, again in a fresh lab after a lab failure,
/// and returns the exit code.
fn run_in_lab(args: &Arguments) -> i32 {
    let share = match progress::Share::create() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("e2e: cannot create the progress directory: {e}");
            return 1;
        }
    };
    let argv: Vec<OsString> = std::env::args_os().collect();
    let options = supermachine_lab::LabOptions {
        cpus: supermachine_lab::test_cpus(),
        shares: vec![share.dir.clone()],
        env: vec![
            (progress::LOG_ENV.into(), share.log().into()),
            (progress::SKIP_ENV.into(), share.skip().into()),
        ],
        ..Default::default()
    };
    let mut ledger = progress::Ledger::default();
    let mut lost = Vec::new();
    for attempt in 1..=ATTEMPTS {
        if let Err(e) = ledger.write_skip(&share.skip()) {
            eprintln!("e2e: cannot write {}: {e}", share.skip().display());
            return 1;
        }
        let started = std::time::Instant::now();
        let result = supermachine_lab::run(&argv, &options);
        ledger.read(&share.log());
        let failure = match result {
            Ok(code) if code != util::LAB_WENT_BAD => {
                return summary(&ledger, &lost, attempt, code);
            }
            Ok(_) => "a command stalled twice in it (LAB WENT BAD)".to_string(),
            Err(e) => match e.lab_failed() {
                Some(failure) => failure,
                None => {
                    eprintln!("e2e: the lab could not run: {e}");
                    if std::env::var_os("SUPERMACHINE_REQUIRE_KVM").is_some() {
                        return 1;
                    }
                    let ignored = trials()
                        .into_iter()
                        .map(|t| t.with_ignored_flag(true))
                        .collect();
                    libtest_mimic::run(args, ignored).exit();
                }
            },
        };
        let attempt_secs = started.elapsed().as_secs();
        eprintln!(
            "e2e: lab attempt {attempt} of {ATTEMPTS} failed after {attempt_secs}s: {failure}"
        );
        match ledger.lab_failed(ATTEMPTS) {
            Some((name, ran)) => {
                eprintln!(
                    "e2e: {name} was running (for {}s: the work lost); {} tests had finished",
                    ran.as_secs(),
                    ledger.finished.len()
                );
                lost.push(format!(
                    "attempt {attempt}: {failure} ({name} lost after {}s)",
                    ran.as_secs()
                ));
            }
            None => lost.push(format!("attempt {attempt}: {failure} (between tests)")),
        }
        if attempt < ATTEMPTS {
            eprintln!("e2e: running the tests not finished yet in a fresh lab");
        }
    }
    summary(&ledger, &lost, ATTEMPTS, 1)
}

/// Prints what happened across the attempts and returns the suite's exit
/// code: the last run's, or a failure if an earlier attempt had one.
fn summary(ledger: &progress::Ledger, lost: &[String], attempts: u32, last_code: i32) -> i32 {
    if attempts == 1 && lost.is_empty() {
        return last_code;
    }
    eprintln!("e2e: {attempts} lab attempts; lab failures:");
    for l in lost {
        eprintln!("  {l}");
    }
    let failures = ledger.failures();
    eprintln!(
        "e2e: over all attempts {} tests passed, {} failed",
        ledger.passed(),
        failures.len()
    );
    for (name, outcome) in &failures {
        let why = match outcome {
            progress::Outcome::LostEveryTime => "running when the lab failed, every time",
            _ => "failed",
        };
        eprintln!("  {name}: {why}");
    }
    if last_code == 0 && !failures.is_empty() {
        101
    } else {
        last_code
    }
}
