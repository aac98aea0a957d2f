//! Restoring a snapshot directory from elsewhere: whatever its state file
//! claims, a machine this host cannot carry, or files that are not what
//! they say, are refused by name before any memory is mapped or vCPU
//! made. Needs /dev/kvm for the empty VM (skipped, with a note, where it
//! cannot be opened); no guest code runs.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use supermachine_protocol::worker_control::FailureKind;
use supermachine_vmm::capped_log::DEFAULT_SERIAL_LOG_CAP;
use supermachine_vmm::snapshot::bundle::{write_state, SnapshotState, MEMORY_FILE, STATE_FILE};
use supermachine_vmm::test_support::snapshot_state as state;
use supermachine_vmm::{EmptyVm, RestoreConfig, Vm};

/// A snapshot directory with `state` and a sparse memory file to match.
fn snapshot(state: &SnapshotState) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_state(dir.path(), state).unwrap();
    let memory = std::fs::File::create(dir.path().join(MEMORY_FILE)).unwrap();
    let len: u64 = state.memory.iter().map(|r| r.len).sum();
    memory.set_len(len.min(1 << 40)).unwrap();
    dir
}

/// The restore's error, as text and as the kind the worker reports, or
/// `None` if this host has no usable KVM.
fn refusal(dir: &Path) -> Option<(String, FailureKind)> {
    let empty = match EmptyVm::new() {
        Ok(vm) => vm,
        Err(e) => {
            support::skip_without_kvm(e);
            return None;
        }
    };
    let config = RestoreConfig {
        snapshot_dir: dir.to_path_buf(),
        disks: Vec::new(),
        vsock: None,
        rng: false,
        fs: Vec::new(),
        net: None,
        serial_log: None,
        serial_log_cap: DEFAULT_SERIAL_LOG_CAP,
        console_echo: false,
    };
    match Vm::restore_into(empty, &config) {
        Ok(_) => panic!("restored"),
        Err(e) => Some((e.to_string(), e.kind())),
    }
}

fn host_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) as usize }
}

#[test]
fn more_vcpus_than_this_host_carries_are_refused() {
    let too_many = (host_cpus() * 4 + 1).min(64);
    let dir = snapshot(&state(too_many, 256));
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains(&format!("{too_many} vCPUs")), "{why}");
    assert_eq!(kind, FailureKind::HostLimits);
}

#[test]
fn more_memory_than_this_host_has_is_refused() {
    let dir = snapshot(&state(1, 1 << 30));
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains("MiB of RAM"), "{why}");
    assert_eq!(kind, FailureKind::HostLimits);
}

#[test]
fn a_memory_layout_this_vmm_never_makes_is_refused() {
    let mut s = state(1, 256);
    s.memory[0].guest_addr = 0x1000;
    let dir = snapshot(&s);
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains("memory layout"), "{why}");
    assert_eq!(kind, FailureKind::SnapshotFormat);
}

#[test]
fn a_memory_file_behind_a_symlink_is_not_mapped() {
    let dir = snapshot(&state(1, 256));
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("memory");
    std::fs::rename(dir.path().join(MEMORY_FILE), &target).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(MEMORY_FILE)).unwrap();
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains("symbolic links"), "{why}");
    assert_eq!(kind, FailureKind::Io);
}

#[test]
fn a_state_that_is_a_device_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join(STATE_FILE)).unwrap();
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains("symbolic links"), "{why}");
    assert_eq!(kind, FailureKind::Io);
}

#[test]
fn a_memory_file_shorter_than_its_layout_is_a_memory_failure() {
    let dir = snapshot(&state(1, 256));
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(MEMORY_FILE))
        .unwrap();
    memory.set_len(1 << 20).unwrap();
    let Some((why, kind)) = refusal(dir.path()) else {
        return;
    };
    assert!(why.contains("truncated"), "{why}");
    assert_eq!(kind, FailureKind::SnapshotMemory);
}
