//! What a worker makes on the host, seen from outside: its VM directory,
//! control socket and serial log are private to its user, and a
//! connection to the control socket from another user is closed
//! unanswered. And how it refuses: each refusal on the control socket
//! carries its kind (a request that does not apply, a damaged snapshot, a
//! truncated memory file). Runs a standby worker (it opens /dev/kvm;
//! skipped, with a note, where that fails); no guest code runs.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use supermachine_protocol::worker_control::{self, FailureKind, WorkerReply, WorkerRequest};
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
            support::skip_without_kvm(format!(
                "the standby worker ended ({status}): no usable /dev/kvm?"
            ));
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

/// Sends `request` (raw bytes when `Err`) to the worker's control socket
/// and returns its reply.
fn ask(worker: &Standby, request: Result<&WorkerRequest, &[u8]>) -> WorkerReply {
    use std::io::Write;
    let mut stream =
        std::os::unix::net::UnixStream::connect(worker.vm_dir.join(worker_control::SOCKET))
            .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    match request {
        Ok(request) => supermachine_protocol::write_frame(&mut stream, request).unwrap(),
        Err(bytes) => {
            stream.write_all(bytes).unwrap();
            // The end of the request: the worker's read sees it.
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
    }
    supermachine_protocol::read_frame(&mut stream).unwrap()
}

/// The kind of a refusal; fails the test on any other reply.
fn refused(reply: WorkerReply) -> FailureKind {
    match reply {
        WorkerReply::Refused(failure) => failure.kind,
        other => panic!("not a typed refusal: {other:?}"),
    }
}

#[test]
fn requests_a_standby_worker_cannot_serve_are_refused_as_bad_requests() {
    let Some(worker) = standby() else { return };
    let snapshot = WorkerRequest::Snapshot {
        dir: worker.vm_dir.join("snap"),
        stop_after: false,
    };
    for request in [WorkerRequest::RecordHotPages, snapshot] {
        let kind = refused(ask(&worker, Ok(&request)));
        assert_eq!(kind, FailureKind::BadRequest, "{request:?}");
    }
    // A frame that does not decode: a length, then bytes that are no request.
    let garbage = [4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        refused(ask(&worker, Err(&garbage))),
        FailureKind::BadRequest
    );
}

/// A snapshot directory for a standby worker's restore: a valid state of
/// one vCPU and 64 MiB, `damage` done to its files, inside `parent`.
fn snapshot_dir(parent: &Path, damage: impl FnOnce(&Path)) -> PathBuf {
    use supermachine_vmm::snapshot::bundle::{write_state, MEMORY_FILE};
    let dir = parent.join("snap");
    std::fs::create_dir(&dir).unwrap();
    let state = supermachine_vmm::test_support::snapshot_state(1, 64);
    write_state(&dir, &state).unwrap();
    let memory = std::fs::File::create(dir.join(MEMORY_FILE)).unwrap();
    memory.set_len(64 << 20).unwrap();
    damage(&dir);
    dir
}

/// What a standby worker answers to a restore of a snapshot with `damage`.
fn restore_refusal(damage: impl FnOnce(&Path)) -> Option<FailureKind> {
    let worker = standby()?;
    let parent = tempfile::tempdir().unwrap();
    let request = WorkerRequest::Restore {
        snapshot_dir: snapshot_dir(parent.path(), damage),
        disks: Vec::new(),
    };
    Some(refused(ask(&worker, Ok(&request))))
}

#[test]
fn a_damaged_state_file_is_refused_as_a_format_failure() {
    use supermachine_vmm::snapshot::bundle::STATE_FILE;
    let kind = restore_refusal(|dir| {
        let path = dir.join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    });
    if let Some(kind) = kind {
        assert_eq!(kind, FailureKind::SnapshotFormat);
    }
}

#[test]
fn a_truncated_memory_file_is_refused_as_a_memory_failure() {
    use supermachine_vmm::snapshot::bundle::MEMORY_FILE;
    let kind = restore_refusal(|dir| {
        let memory = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(MEMORY_FILE))
            .unwrap();
        memory.set_len(1 << 20).unwrap();
    });
    if let Some(kind) = kind {
        assert_eq!(kind, FailureKind::SnapshotMemory);
    }
}
