//! The worker binary's parent-death handling, run as its own process.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use supermachine_protocol::worker_exit;

/// A worker whose owner is already gone when it starts (here: it names a
/// pid that is not its parent) ends at once as stopped and removes its
/// directory and serial log, before it touches KVM.
#[test]
fn a_worker_whose_owner_is_gone_ends_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("sm-worker-owner-{}", std::process::id()));
    let vm_dir = dir.join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let log = dir.join("serial.log");
    std::fs::write(&log, "").unwrap();
    // Pids never reach this (the kernel's maximum is 2^22).
    let not_the_parent = 1 << 23;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_supermachine-worker"))
        .arg("--standby")
        .arg("--vm-dir")
        .arg(&vm_dir)
        .arg("--serial-log")
        .arg(&log)
        .arg("--owned-by-parent")
        .arg(not_the_parent.to_string())
        .spawn()
        .unwrap();
    // A worker that missed its owner's absence would wait on its control
    // socket for ever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let left = (vm_dir.exists(), log.exists());
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("the worker did not end within 20 s");
    assert_eq!(status.code(), Some(worker_exit::STOPPED));
    assert_eq!(left, (false, false), "(vm dir, serial log) left behind");
}
