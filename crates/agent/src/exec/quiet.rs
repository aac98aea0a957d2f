//! An exec without stdin or a terminal, served by its connection thread
//! alone: one `poll` over the child's stdout and stderr, the host socket
//! and the reaper's "reaped" pipe, with the timeout as the poll timeout.
//!
//! This is the common exec (run a command, collect its output), and the
//! threaded exec ([`crate::exec`]) would start two more threads for it:
//! one to pump output and one to read host frames. Here the host can only
//! send control frames (a signal; end-of-stdin, resizes and stdin data
//! mean nothing without a stdin or a terminal), which are a few bytes and
//! never need backpressure, so reading them in the same loop is safe. A
//! child with stdin needs a thread that may block writing to it, and keeps
//! the threaded path.
//!
//! The rules are the threaded path's: output is forwarded until both pipes
//! reach EOF or [`EXIT_GRACE`] after the main process is reaped, the
//! timeout kills the session's process groups, and the host leaving (or
//! breaking the protocol) before `Exited` aborts the exec.

use crate::exec::streams::{control, Control, Dropped, Output, EXIT_GRACE};
use crate::exec::{Group, Writer};
use crate::reaper::WaitStatus;
use crate::sys;
use crate::transport::Stream;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::time::Instant;
use supermachine_protocol::{read_frame, FrameError, HostMessage};

/// How a quiet exec ended.
pub struct Ended {
    /// The main process's raw status; `None` if the exec was aborted
    /// before it was reaped.
    pub status: Option<WaitStatus>,
    /// The deadline passed and the session's groups were killed.
    pub timed_out: bool,
    /// Output read but not sent because of the request's limits.
    pub dropped: Dropped,
}

/// The exec's fds and where it stands.
pub struct Quiet<'a> {
    /// The connection, read here for the host's control frames.
    pub stream: &'a Stream,
    /// The same connection's write side, for output and errors.
    pub writer: &'a Writer,
    /// The child's process groups, to signal and kill.
    pub group: &'a Group,
    /// The child's stdout and stderr.
    pub outputs: Vec<Output>,
    /// Reads EOF once the reaper has the main process's status.
    pub reaped: OwnedFd,
    /// Yields that status.
    pub status: &'a Receiver<WaitStatus>,
    /// When the request's timeout kills the child; `None` for no timeout.
    pub deadline: Option<Instant>,
}

/// Runs the exec to its end. Returns `None` when it was aborted (the host
/// left or broke the protocol, or output could not be sent): the group is
/// killed and nothing more may be sent.
pub fn serve(mut q: Quiet<'_>) -> Option<Ended> {
    let mut buf = vec![0u8; supermachine_protocol::MAX_CHUNK];
    let mut status: Option<WaitStatus> = None;
    let mut grace_end: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if status.is_some() && !q.outputs.iter().any(|o| o.is_open()) {
            break;
        }
        let timeout = match (grace_end, q.deadline) {
            (Some(end), _) => match end.checked_duration_since(now) {
                Some(left) if !left.is_zero() => Some(left),
                _ => break,
            },
            (None, Some(deadline)) if now >= deadline => {
                q.group.kill();
                timed_out = true;
                q.deadline = None;
                continue;
            }
            (None, Some(deadline)) => Some(deadline - now),
            (None, None) => None,
        };

        let open: Vec<usize> = (0..q.outputs.len())
            .filter(|&i| q.outputs[i].is_open())
            .collect();
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| sys::pollfd(q.outputs[i].fd(), libc::POLLIN))
            .collect();
        fds.push(sys::pollfd(q.stream.as_fd(), libc::POLLIN));
        let host_slot = fds.len() - 1;
        let reaped_slot = status.is_none().then(|| {
            fds.push(sys::pollfd(q.reaped.as_fd(), libc::POLLIN));
            fds.len() - 1
        });
        if let Err(e) = sys::poll(&mut fds, timeout) {
            crate::log!("exec: poll: {e}");
            q.group.abort();
            return None;
        }

        for (slot, &i) in open.iter().enumerate() {
            if fds[slot].revents != 0 && q.outputs[i].pump(&mut buf, q.writer).is_err() {
                // The host is gone.
                q.group.abort();
                return None;
            }
        }
        if fds[host_slot].revents != 0 && !host_frame(q.stream, q.writer, q.group) {
            return None;
        }
        if reaped_slot.is_some_and(|s| fds[s].revents != 0) {
            // The reaper sent the status before closing the pipe.
            status = Some(q.status.recv().ok()?);
            q.group.reaped();
            grace_end = Some(Instant::now() + EXIT_GRACE);
        }
    }
    Some(Ended {
        status,
        timed_out,
        dropped: crate::exec::streams::counts(&q.outputs),
    })
}

/// Reads one frame the host sent during the exec and acts on it. False:
/// the host left or broke the protocol, and the exec was aborted.
fn host_frame(stream: &Stream, writer: &Writer, group: &Group) -> bool {
    let read = read_frame::<HostMessage, _>(&mut &*stream);
    if matches!(&read, Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::Interrupted) {
        return true;
    }
    match control(read) {
        Ok(Control::Signal(sig)) => {
            group.signal(sig);
            true
        }
        // Without a stdin or a terminal these change nothing, as on the
        // threaded path.
        Ok(Control::Stdin(_) | Control::CloseStdin | Control::Resize(_)) => true,
        Err(problem) => {
            group.host_failed(writer, problem);
            stream.shutdown();
            false
        }
    }
}
