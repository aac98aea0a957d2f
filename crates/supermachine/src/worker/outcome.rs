//! How a VM's worker process ended, decoded from its exit status.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use supermachine_protocol::worker_exit;

/// How a VM's worker ended.
///
/// ```
/// use supermachine::VmOutcome;
/// assert_eq!(VmOutcome::PowerOff.to_string(), "the guest powered off");
/// assert_eq!(VmOutcome::Killed(9).to_string(), "the worker was killed by signal 9");
/// assert_eq!(VmOutcome::Crash(None).to_string(), "the virtual CPU crashed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted (the VM ends; it is not restarted).
    Reboot,
    /// The guest kernel panicked.
    Panic,
    /// The worker's account of it (where the guest was), if it gave one.
    Crash(Option<String>),
    /// The VM was stopped from the host.
    Stopped,
    /// The guest agent could not boot the VM (details on the console).
    BootFailed,
    /// The worker failed; its account of why.
    Error(String),
    /// The worker was killed by this signal.
    Killed(i32),
}

impl std::fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmOutcome::PowerOff => write!(f, "the guest powered off"),
            VmOutcome::Reboot => write!(f, "the guest rebooted"),
            VmOutcome::Panic => write!(f, "the guest kernel panicked"),
            VmOutcome::Crash(None) => write!(f, "the virtual CPU crashed"),
            VmOutcome::Crash(Some(why)) => write!(f, "the virtual CPU crashed: {why}"),
            VmOutcome::Stopped => write!(f, "the VM was stopped"),
            VmOutcome::BootFailed => write!(f, "the guest agent could not boot the VM"),
            VmOutcome::Error(e) => write!(f, "the worker failed: {e}"),
            VmOutcome::Killed(sig) => write!(f, "the worker was killed by signal {sig}"),
        }
    }
}

pub(crate) fn outcome_of(status: ExitStatus, stderr: &str) -> VmOutcome {
    match (status.code(), status.signal()) {
        (Some(worker_exit::POWER_OFF), _) => VmOutcome::PowerOff,
        (Some(worker_exit::REBOOT), _) => VmOutcome::Reboot,
        (Some(worker_exit::PANIC), _) => VmOutcome::Panic,
        (Some(worker_exit::CRASH), _) => VmOutcome::Crash(
            stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("supermachine-worker: "))
                .map(str::to_string),
        ),
        (Some(worker_exit::STOPPED), _) => VmOutcome::Stopped,
        (Some(worker_exit::BOOT_FAILED), _) => VmOutcome::BootFailed,
        (Some(code), _) => VmOutcome::Error(if stderr.trim().is_empty() {
            format!("exit code {code}")
        } else {
            stderr.trim().to_string()
        }),
        (None, Some(sig)) => VmOutcome::Killed(sig),
        (None, None) => VmOutcome::Error("unknown exit status".into()),
    }
}
