//! What a worker makes on the host, seen from outside: its VM directory,
//! control socket and serial log are private to its user, and a
//! connection to the control socket from another user is closed
//! unanswered. Runs a standby worker (it opens /dev/kvm; skipped, with a
//! note, where that fails).

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use supermachine_protocol::worker_control;
use supermachine_vmm::test_support::{
    can_switch_user, open_to_all, within_a_minute, OtherUser, NOBODY,
};

struct Standby {
    _dir: tempfile::TempDir,
    vm_dir: PathBuf,
    serial_log: PathBuf,
    child: Child,
}

impl Drop for Standby {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o777
}

/// A standby worker with its control socket up, or `None` (with a note)
/// if it ended first (no usable /dev/kvm here).
fn standby() -> Option<Standby> {
    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    std::fs::set_permissions(&vm_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let serial_log = dir.path().join("serial.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_supermachine-worker"))
        .arg("--standby")
        .arg("--vm-dir")
        .arg(&vm_dir)
        .arg("--serial-log")
        .arg(&serial_log)
        .spawn()
        .unwrap();
    let socket = vm_dir.join(worker_control::SOCKET);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The serial log is opened once the empty VM exists, after the socket.
    while !(socket.exists() && serial_log.exists()) {
        if let Some(status) = child.try_wait().unwrap() {
            eprintln!("SKIP: the standby worker ended ({status}): no usable /dev/kvm?");
            return None;
        }
        assert!(Instant::now() < deadline, "no control socket within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Standby {
        _dir: dir,
        vm_dir,
        serial_log,
        child,
    })
}

#[test]
fn the_vm_directory_control_socket_and_serial_log_are_private() {
    let Some(worker) = standby() else { return };
    assert_eq!(mode(&worker.vm_dir), 0o700);
    assert_eq!(mode(&worker.vm_dir.join(worker_control::SOCKET)), 0o600);
    assert_eq!(mode(&worker.serial_log), 0o600);
}

#[test]
fn a_control_connection_from_another_user_is_closed_unanswered() {
    if !can_switch_user() {
        eprintln!("SKIP: only root can connect as another user");
        return;
    }
    let Some(worker) = standby() else { return };
    let socket = worker.vm_dir.join(worker_control::SOCKET);
    open_to_all(&socket);
    let closed = within_a_minute(move || {
        let other = OtherUser::connect(NOBODY, &socket, b"not a frame");
        loop {
            if let Some(closed) = other.closed() {
                return closed;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert!(closed, "answered, or never closed");
    drop(worker);
}
