//! Requests to a running VM from outside its vCPUs (the worker's control
//! socket), served by the thread that runs the VM.

use crate::outcome::{Event, ExitSender};
use crate::vm::VmError;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use supermachine_protocol::worker_control::{FailureKind, SnapshotReport, WorkerFailure};

/// Take a snapshot into `dir`, then resume, or stay paused (when the
/// caller is about to end the VM: nothing may run after the snapshot).
pub struct SnapshotRequest {
    /// Where the snapshot goes (existing, empty).
    pub dir: PathBuf,
    /// Leave the vCPUs paused after a snapshot that succeeded.
    pub stay_paused: bool,
    /// Where the result goes.
    pub reply: Sender<Result<SnapshotReport, VmError>>,
}

/// Why a control request was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The VM had ended before the request reached it.
    #[error("the VM is not running")]
    NotRunning,
    /// The VM ended while it served the request.
    #[error("the VM ended during the snapshot")]
    EndedDuring,
    /// The VM took the request and failed it.
    #[error(transparent)]
    Failed(#[from] VmError),
}

impl ControlError {
    /// This error as the worker reports it: its kind and its text.
    pub fn failure(&self) -> WorkerFailure {
        let kind = match self {
            ControlError::NotRunning | ControlError::EndedDuring => FailureKind::NotRunning,
            ControlError::Failed(e) => e.kind(),
        };
        WorkerFailure::new(kind, self.to_string())
    }
}

/// A handle to send control requests to a running VM.
#[derive(Clone)]
pub struct ControlHandle(pub(crate) ExitSender);

impl ControlHandle {
    /// Asks for a snapshot and waits for its result.
    pub fn snapshot(
        &self,
        dir: PathBuf,
        stay_paused: bool,
    ) -> Result<SnapshotReport, ControlError> {
        let (reply, answer) = std::sync::mpsc::channel();
        let request = SnapshotRequest {
            dir,
            stay_paused,
            reply,
        };
        if self.0 .0.send(Event::Snapshot(request)).is_err() {
            return Err(ControlError::NotRunning);
        }
        match answer.recv() {
            Ok(result) => Ok(result?),
            Err(_) => Err(ControlError::EndedDuring),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_a_vm_that_ended_is_refused_as_not_running() {
        let (exit, events) = crate::outcome::channel();
        drop(events);
        let e = ControlHandle(exit)
            .snapshot(PathBuf::from("/nowhere"), false)
            .unwrap_err();
        assert_eq!(e.failure().kind, FailureKind::NotRunning, "{e}");
    }

    #[test]
    fn a_vm_that_ends_during_a_snapshot_is_reported_as_not_running() {
        let (exit, events) = crate::outcome::channel();
        // The VM's thread: takes the request and ends without answering.
        let vm = std::thread::spawn(move || drop(events.recv()));
        let e = ControlHandle(exit)
            .snapshot(PathBuf::from("/nowhere"), false)
            .unwrap_err();
        vm.join().unwrap();
        assert!(matches!(e, ControlError::EndedDuring), "{e}");
        assert_eq!(e.failure().kind, FailureKind::NotRunning);
    }
}
