//! How a VM run ends, and the channel devices and vCPUs report it on (the
//! same channel carries control requests to the thread running the VM).

use crate::control::SnapshotRequest;
use std::sync::mpsc::{Receiver, Sender};
use supermachine_protocol::worker_exit;

/// Why a VM run ended; [`Vm::run`](crate::Vm::run) returns it and the
/// worker exits with its [`exit_code`](Self::exit_code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest asked to power off.
    PowerOff,
    /// The guest asked to reboot (or reset the CPU) without having panicked.
    Reboot,
    /// The guest kernel panicked.
    Panic,
    /// The VM hit a state it cannot continue from.
    Crash(String),
    /// The host told the worker to stop.
    Stopped,
    /// The guest agent could not finish booting.
    BootFailed,
}

impl Outcome {
    /// The worker's exit status for this outcome, as the host side reads it
    /// ([`worker_exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::PowerOff => worker_exit::POWER_OFF,
            Outcome::Reboot => worker_exit::REBOOT,
            Outcome::Panic => worker_exit::PANIC,
            Outcome::Crash(_) => worker_exit::CRASH,
            Outcome::Stopped => worker_exit::STOPPED,
            Outcome::BootFailed => worker_exit::BOOT_FAILED,
        }
    }
}

/// What the thread running the VM waits for.
pub enum Event {
    /// The run is over.
    Exit(Outcome),
    /// A snapshot request from a [`ControlHandle`](crate::ControlHandle).
    Snapshot(SnapshotRequest),
}

/// Anything that can end the VM holds one of these. Sending after the VM
/// already ended is harmless.
#[derive(Clone)]
pub struct ExitSender(pub(crate) Sender<Event>);

impl ExitSender {
    /// Reports `outcome`; the first one sent is the one the run returns.
    /// Never blocks.
    pub fn send(&self, outcome: Outcome) {
        let _ = self.0.send(Event::Exit(outcome));
    }
}

/// A new channel: the sender for devices and vCPUs (clone it freely), the
/// receiver for the thread running the VM.
pub fn channel() -> (ExitSender, Receiver<Event>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (ExitSender(tx), rx)
}
