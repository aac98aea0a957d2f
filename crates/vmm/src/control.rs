//! Requests to a running VM from outside its vCPUs (the worker's control
//! socket), served by the thread that runs the VM.

use crate::outcome::{Event, ExitSender};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use supermachine_protocol::worker_control::SnapshotReport;

/// Take a snapshot into `dir`, then resume, or stay paused (when the
/// caller is about to end the VM: nothing may run after the snapshot).
pub struct SnapshotRequest {
    pub dir: PathBuf,
    pub stay_paused: bool,
    pub reply: Sender<Result<SnapshotReport, String>>,
}

/// A handle to send control requests to a running VM.
#[derive(Clone)]
pub struct ControlHandle(pub(crate) ExitSender);

impl ControlHandle {
    /// Asks for a snapshot and waits for its result.
    pub fn snapshot(&self, dir: PathBuf, stay_paused: bool) -> Result<SnapshotReport, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        let request = SnapshotRequest {
            dir,
            stay_paused,
            reply,
        };
        if self.0 .0.send(Event::Snapshot(request)).is_err() {
            return Err("the VM is not running".into());
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err("the VM ended during the snapshot".into()))
    }
}
