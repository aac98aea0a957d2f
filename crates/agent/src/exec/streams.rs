//! The two I/O loops of an exec: child output to host frames, host frames
//! to child input (and signals, resizes).
//!
//! Neither loop may block where nothing can wake it: the output fds are
//! polled together with the "main process exited" pipe, and stdin writes
//! wait in `poll` on the same pipe, because a daemon the child started may
//! hold any of these fds open, unread, forever.

use super::pty;
use crate::exec::{send, Group, Writer};
use crate::sys;
use crate::transport::Stream;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use supermachine_protocol::{
    read_frame, AgentMessage, FrameError, HostMessage, WindowSize, MAX_CHUNK,
};

/// How long output is still forwarded after the main process exited while
/// something else holds the output open. Long enough for what the process
/// wrote just before exiting and for short-lived helpers to finish, short
/// enough that a daemon does not noticeably delay `Exited`.
pub const EXIT_GRACE: Duration = Duration::from_millis(250);

/// One output fd of the child (a pipe, or the PTY master).
pub struct Output {
    fd: Arc<OwnedFd>,
    stdout: bool,
    limit: Option<u64>,
    sent: u64,
    dropped: u64,
    open: bool,
}

impl Output {
    /// The child's stdout (or the PTY master), sent as `Stdout` frames.
    /// After `limit` bytes the rest is read and dropped, not sent, so the
    /// child never stalls on a full pipe.
    pub fn stdout(fd: Arc<OwnedFd>, limit: Option<u64>) -> Output {
        Output::new(fd, true, limit)
    }

    /// The child's stderr, sent as `Stderr` frames; `limit` as for
    /// [`Output::stdout`].
    pub fn stderr(fd: Arc<OwnedFd>, limit: Option<u64>) -> Output {
        Output::new(fd, false, limit)
    }

    fn new(fd: Arc<OwnedFd>, stdout: bool, limit: Option<u64>) -> Output {
        Output {
            fd,
            stdout,
            limit,
            sent: 0,
            dropped: 0,
            open: true,
        }
    }

    /// False once the fd reached EOF or failed: stop polling it.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The fd to poll for readability before calling [`Output::pump`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads what the fd has (it is non-blocking) and forwards it; EOF or
    /// a read error closes this output. Fails only when the host is gone.
    pub fn pump(&mut self, buf: &mut [u8], writer: &Writer) -> Result<(), FrameError> {
        match sys::read(self.fd.as_fd(), buf) {
            Ok(0) => self.open = false,
            Ok(n) => self.forward(&buf[..n], writer)?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // EIO is how a PTY master reports that no slave is left.
            Err(_) => self.open = false,
        }
        Ok(())
    }

    /// Sends what the limit allows of `data`, counts the rest as dropped.
    fn forward(&mut self, data: &[u8], writer: &Writer) -> Result<(), FrameError> {
        let room = self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.sent));
        let n = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.dropped += (data.len() - n) as u64;
        if n == 0 {
            return Ok(());
        }
        self.sent += n as u64;
        let data = data[..n].to_vec();
        send(
            writer,
            &if self.stdout {
                AgentMessage::Stdout(data)
            } else {
                AgentMessage::Stderr(data)
            },
        )
    }
}

/// Output bytes read but not sent because of the limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dropped {
    /// Bytes of stdout (or of the terminal's output) past `stdout_limit`.
    pub stdout: u64,
    /// Bytes of stderr past `stderr_limit`.
    pub stderr: u64,
}

/// Forwards the outputs until all reach EOF, or until [`EXIT_GRACE`] after
/// `exited` closes (the main process was reaped). Returns the dropped
/// counts; on return every output fd of this exec is released (the PTY
/// master only once the other threads let go of it too).
pub fn pump_output(
    mut outputs: Vec<Output>,
    exited: OwnedFd,
    writer: &Writer,
    group: &Group,
) -> Dropped {
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut grace_end: Option<Instant> = None;
    while outputs.iter().any(|o| o.open) {
        let timeout = match grace_end {
            Some(end) => match end.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => break,
            },
            None => None,
        };
        let open: Vec<usize> = (0..outputs.len()).filter(|&i| outputs[i].open).collect();
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| sys::pollfd(outputs[i].fd.as_fd(), libc::POLLIN))
            .collect();
        if grace_end.is_none() {
            fds.push(sys::pollfd(exited.as_fd(), libc::POLLIN));
        }
        if let Err(e) = sys::poll(&mut fds, timeout) {
            crate::log!("exec: poll: {e}");
            break;
        }
        for (slot, &i) in open.iter().enumerate() {
            if fds[slot].revents != 0 && outputs[i].pump(&mut buf, writer).is_err() {
                // The host is gone.
                group.abort();
                return counts(&outputs);
            }
        }
        if grace_end.is_none() && fds.last().is_some_and(|f| f.revents != 0) {
            grace_end = Some(Instant::now() + EXIT_GRACE);
        }
    }
    counts(&outputs)
}

/// What `outputs` have dropped so far, summed per stream, for `Exited`.
pub fn counts(outputs: &[Output]) -> Dropped {
    let mut d = Dropped::default();
    for o in outputs {
        if o.stdout {
            d.stdout += o.dropped;
        } else {
            d.stderr += o.dropped;
        }
    }
    d
}

/// Where stdin frames go.
pub enum Input {
    /// The write end of the stdin pipe; `None` for /dev/null or once closed.
    Pipe(Option<OwnedFd>),
    /// The PTY master; `enabled` is the request's `stdin` (a PTY's input
    /// is otherwise never written, but resizes still apply).
    Pty {
        /// Shared with the output side, which reads the same fd.
        master: Arc<OwnedFd>,
        /// Whether stdin frames are written (the request's `stdin`); cleared
        /// when the input ends or the terminal stops taking it.
        enabled: bool,
    },
}

impl Input {
    /// Writes `data`; drops the input for good when the child stopped
    /// reading (EPIPE) or exited while the write waited.
    fn write(&mut self, data: &[u8], exited: &OwnedFd) {
        let ok = match self {
            Input::Pipe(Some(fd)) => sys::write_all_or_cancel(fd.as_fd(), data, exited.as_fd()),
            Input::Pty {
                master,
                enabled: true,
            } => sys::write_all_or_cancel(master.as_fd(), data, exited.as_fd()),
            _ => return,
        };
        if !matches!(ok, Ok(true)) {
            self.close();
        }
    }

    fn close(&mut self) {
        match self {
            Input::Pipe(fd) => *fd = None,
            Input::Pty { enabled, .. } => *enabled = false,
        }
    }

    /// End of input: a pipe closes; a terminal gets its EOF character.
    fn end(&mut self, exited: &OwnedFd) {
        if let Input::Pty {
            master,
            enabled: true,
        } = self
        {
            let eof = [pty::eof_char(master.as_fd())];
            self.write(&eof, exited);
        }
        self.close();
    }
}

/// Reads host frames until the connection ends: stdin data, end of stdin,
/// signals, resizes. A malformed or misplaced frame, or the host leaving
/// before the exec is over, aborts the exec (kills the process group).
pub fn pump_input(
    reader: Stream,
    mut input: Input,
    exited: OwnedFd,
    writer: &Writer,
    group: &Group,
) {
    loop {
        let problem = match control(read_frame::<HostMessage, _>(&mut &reader)) {
            Ok(Control::Stdin(data)) => {
                // A child that closed its stdin just loses the rest, as
                // with a shell pipe; stdin frames without `stdin: true`
                // are dropped the same way.
                input.write(&data, &exited);
                continue;
            }
            Ok(Control::CloseStdin) => {
                input.end(&exited);
                continue;
            }
            Ok(Control::Signal(sig)) => {
                group.signal(sig);
                continue;
            }
            Ok(Control::Resize(size)) => {
                if let Input::Pty { master, .. } = &input {
                    let _ = pty::set_size(master.as_fd(), size);
                }
                continue;
            }
            Err(problem) => problem,
        };
        group.host_failed(writer, problem);
        reader.shutdown();
        return;
    }
}

/// What the host may send while an exec runs.
pub enum Control {
    /// Bytes for the child's stdin.
    Stdin(Vec<u8>),
    /// The host has no more stdin: close the pipe, or send the terminal's
    /// EOF character.
    CloseStdin,
    /// A signal number for the child (the terminal's foreground group with
    /// a PTY); numbers that are no signal are ignored.
    Signal(i32),
    /// The host's terminal changed size; applies only with a PTY.
    Resize(WindowSize),
}

/// Sorts a frame read from the host during an exec: one of the exec's
/// controls, or why the exec must end: a misplaced or malformed frame
/// (the message to send back), or `None` when the host left.
pub fn control(read: Result<HostMessage, FrameError>) -> Result<Control, Option<String>> {
    match read {
        Ok(HostMessage::Stdin(data)) => Ok(Control::Stdin(data)),
        Ok(HostMessage::CloseStdin) => Ok(Control::CloseStdin),
        Ok(HostMessage::Signal(sig)) => Ok(Control::Signal(sig)),
        Ok(HostMessage::Resize(size)) => Ok(Control::Resize(size)),
        Ok(other @ (HostMessage::Data(_) | HostMessage::End)) => Err(Some(format!(
            "unexpected frame during exec: {}",
            name(&other)
        ))),
        Err(e @ (FrameError::Decode(_) | FrameError::TooLarge(_))) => {
            Err(Some(format!("bad frame during exec: {e}")))
        }
        Err(_) => Err(None),
    }
}

fn name(msg: &HostMessage) -> &'static str {
    match msg {
        HostMessage::Stdin(_) => "Stdin",
        HostMessage::CloseStdin => "CloseStdin",
        HostMessage::Signal(_) => "Signal",
        HostMessage::Resize(_) => "Resize",
        HostMessage::Data(_) => "Data",
        HostMessage::End => "End",
    }
}
