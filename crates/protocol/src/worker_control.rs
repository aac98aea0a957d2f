//! The worker's control socket: how the host library asks a running worker
//! (not the guest) to do VMM-level things, such as taking a snapshot.
//!
//! The worker listens on [`SOCKET`] in its VM directory. Each connection
//! carries one [`WorkerRequest`] frame and gets one [`WorkerReply`] frame,
//! framed like the agent protocol ([`crate::write_frame`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// File name of the control socket inside the VM directory.
pub const SOCKET: &str = "control.sock";

/// File name, inside a snapshot directory, of the worker's list of the
/// pages a restore of it touches first (see [`WorkerRequest::RecordHotPages`]).
pub const HOT_PAGES_FILE: &str = "hot-pages";

/// What the host asks a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// Pause the machine, write its state and memory into `dir` (an
    /// existing, empty directory), then resume it, or end the worker with
    /// [`crate::worker_exit::STOPPED`] when `stop_after` is set.
    Snapshot {
        /// Where the snapshot goes.
        dir: PathBuf,
        /// End the VM after a snapshot that succeeded.
        stop_after: bool,
    },
    /// To a standby worker (`--standby`): restore the snapshot in
    /// `snapshot_dir` with these disks (`crate::disk_spec` strings, in the
    /// snapshotted VM's order) and run it. Answered with
    /// [`WorkerReply::Restored`] once the VM is about to run, or
    /// [`WorkerReply::Refused`], after which the worker ends.
    Restore {
        /// The snapshot directory (state and memory files).
        snapshot_dir: PathBuf,
        /// The disks, as `crate::disk_spec` strings.
        disks: Vec<String>,
    },
    /// To a VM restored from a snapshot with no hot-page list: store the
    /// pages it has touched so far as that list, so later restores map
    /// them ahead. Answered with [`WorkerReply::HotPagesRecorded`].
    RecordHotPages,
}

/// What a worker answers: one reply per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// The snapshot is written; what it wrote and cost.
    Snapshotted(SnapshotReport),
    /// The snapshot is restored and the VM about to run.
    Restored,
    /// The hot-page list is stored.
    HotPagesRecorded {
        /// Pages the guest had touched.
        touched: u64,
        /// Of those, pages it had written.
        written: u64,
    },
    /// A failure as text only (older workers; the host reads it as
    /// [`FailureKind::Other`]). New code sends [`WorkerReply::Refused`].
    Failed(String),
    /// A failure with its kind, so the host can tell them apart without
    /// reading the message.
    Refused(WorkerFailure),
}

/// Why a worker could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerFailure {
    /// What kind of failure, for the host to act on.
    pub kind: FailureKind,
    /// For people: what went wrong and what to do.
    pub message: String,
}

impl WorkerFailure {
    /// A failure of `kind`, with what to tell a person.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> WorkerFailure {
        WorkerFailure {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`WorkerFailure`] a caller may act on. Append only: the
/// encoding is by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Anything else.
    Other,
    /// The request did not decode, or does not apply to this worker
    /// (a restore to a running VM, a snapshot to a standby).
    BadRequest,
    /// The VM is not running (any more).
    NotRunning,
    /// The snapshot's state file is not one this worker reads: bad magic,
    /// another format version, corrupt, or it does not decode.
    SnapshotFormat,
    /// The snapshot's memory file does not match its layout (truncated?).
    SnapshotMemory,
    /// The snapshot's guest TSC runs at another rate and this host's KVM
    /// cannot scale it.
    TscRate,
    /// The disks given do not match the snapshotted VM's (count, size,
    /// read-only flag).
    DiskMismatch,
    /// The host's KVM refused (an ioctl failed, /dev/kvm unusable).
    Kvm,
    /// Reading or writing a file failed.
    Io,
    /// Recording the hot pages failed, or there is nothing to record.
    HotPages,
    /// The snapshot describes a machine this host does not carry: more
    /// vCPUs than it allows, or more memory than it has.
    HostLimits,
    /// The shared directories given do not match the snapshotted VM's
    /// (another tag, symlink policy or read-only-ness).
    MountMismatch,
}

/// What a snapshot wrote and what it cost the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Guest RAM size: the memory file's length.
    pub memory_bytes: u64,
    /// Non-zero pages written; the rest of the file is holes.
    pub memory_data_bytes: u64,
    /// Size of the state file (vCPUs, VM, devices).
    pub state_bytes: u64,
    /// How long the vCPUs were stopped, in microseconds.
    pub paused_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind is sent as its position: a host and a worker of different
    /// builds agree on every kind they both know only if kinds are never
    /// reordered, only appended.
    #[test]
    fn failure_kinds_keep_their_positions() {
        let kinds = [
            FailureKind::Other,
            FailureKind::BadRequest,
            FailureKind::NotRunning,
            FailureKind::SnapshotFormat,
            FailureKind::SnapshotMemory,
            FailureKind::TscRate,
            FailureKind::DiskMismatch,
            FailureKind::Kvm,
            FailureKind::Io,
            FailureKind::HotPages,
            FailureKind::HostLimits,
            FailureKind::MountMismatch,
        ];
        for (position, kind) in kinds.into_iter().enumerate() {
            let bytes = postcard::to_allocvec(&kind).unwrap();
            assert_eq!(bytes, [position as u8], "{kind:?}");
        }
    }
}
