//! One `Exec` connection: start the process, stream its output, feed its
//! stdin, report how it ended.
//!
//! An exec without stdin or a terminal (the common case) runs in this
//! thread alone ([`quiet`]). Otherwise, threads per exec: this one
//! (waits for the exit status and enforces the timeout), one polling the
//! output fds ([`streams::pump_output`]), one reading host frames
//! ([`streams::pump_input`]), which may block writing stdin. Output frames share the
//! socket behind a mutex, one whole frame per lock. Every stream is
//! bounded: a slow host stalls the output pipes and so the child, and a
//! child that does not read stdin stalls the host's stdin frames.
//!
//! The exec ends when its main process has exited: output still readable
//! then is forwarded for a short grace period (a daemon the child started
//! may hold the pipes open forever), then `Exited` is sent and every fd
//! and thread of the exec is released. Processes the child left behind
//! keep running, as they would after a shell command.
//!
//! If the host goes away before `Exited` (connection closed, reset, or a
//! malformed frame), the child's whole process group is SIGKILLed: nothing
//! keeps running that nobody can see or stop. A read EOF counts as going
//! away, so the host must end stdin with `CloseStdin`, never by
//! half-closing its side of the socket.

pub mod pty;
pub mod quiet;
pub mod spawn;
pub mod streams;

use self::spawn::{Child, ChildIo, SpawnError};
use self::streams::{Input, Output};
use crate::transport::Stream;
use crate::{reaper, sys};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use supermachine_protocol::{encode, AgentMessage, ErrorKind, ExecRequest, ExitStatus, FrameError};

/// The socket's write side, shared by every thread of one exec.
pub type Writer = Arc<Mutex<Outbox>>;

/// An exec's socket, and frames held back to leave with the next one.
///
/// Every `write` on a vsock stream is its own packet, and every packet is
/// one notification of the host's device (a VM exit). Frames the host
/// does not need at once ([`hold`]) ride along with the next frame in a
/// single write instead of costing a notification of their own.
pub struct Outbox {
    stream: Stream,
    held: Vec<u8>,
}

impl Outbox {
    /// Wraps the exec's socket (a clone of the one its frames are read
    /// from) for the exec's threads to share.
    pub fn new(stream: Stream) -> Writer {
        Arc::new(Mutex::new(Outbox {
            stream,
            held: Vec::new(),
        }))
    }
}

/// Sends `msg`, after any held frames, in one write.
pub fn send(writer: &Writer, msg: &AgentMessage) -> Result<(), FrameError> {
    let mut out = writer.lock().unwrap_or_else(|e| e.into_inner());
    let frame = encode(msg)?;
    let bytes = if out.held.is_empty() {
        frame
    } else {
        let mut bytes = std::mem::take(&mut out.held);
        bytes.extend_from_slice(&frame);
        bytes
    };
    (&out.stream).write_all(&bytes)?;
    Ok(())
}

/// Queues `msg` to go out in front of the next [`send`]. Nothing is sent
/// if no frame follows (the exec was aborted: the host is gone).
pub fn hold(writer: &Writer, msg: &AgentMessage) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    let mut out = writer.lock().unwrap_or_else(|e| e.into_inner());
    out.held.extend_from_slice(&frame);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The main process runs: signals go to it.
    Running,
    /// The main process was reaped; its pid may be reused, but the group
    /// id stays reserved while any member lives, so the group can still
    /// be killed.
    Reaped,
    /// `Exited` is being sent: the exec is over, nothing is killed.
    Done,
    /// The host went away or broke the protocol; the group was killed and
    /// nothing more is sent.
    Aborted,
}

/// The child's process group and where the exec stands.
pub struct Group {
    pid: libc::pid_t,
    /// The PTY master, when there is one: signals go to its foreground group.
    pty: Option<Arc<OwnedFd>>,
    state: Mutex<State>,
}

impl Group {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `sig` to the process (with a PTY: to the terminal's
    /// foreground group), while it runs. Numbers that are no signal are
    /// ignored: kill(2) refuses them with EINVAL.
    pub fn signal(&self, sig: i32) {
        let state = self.state();
        if *state != State::Running || !(1..=libc::SIGRTMAX()).contains(&sig) {
            return;
        }
        let target = match self
            .pty
            .as_deref()
            .and_then(|m| pty::foreground_group(m.as_fd()))
        {
            Some(pgrp) => -pgrp,
            None => self.pid,
        };
        // SAFETY: plain syscall; the state lock keeps the pid ours.
        unsafe { libc::kill(target, sig) };
    }

    /// SIGKILLs the whole group while the exec is not over.
    pub fn kill(&self) {
        let state = self.state();
        if matches!(*state, State::Running | State::Reaped) {
            self.kill_groups();
        }
    }

    /// SIGKILLs every process group of the child's session: its own, and
    /// the others an interactive shell with job control makes for its
    /// foreground and background jobs (a job that ignores SIGHUP would
    /// otherwise outlive the terminal). The child is a session leader
    /// (`setsid` in `spawn`), so its session id is its pid; a process that
    /// starts a session of its own has left on purpose (a daemon). Call
    /// with the state locked.
    fn kill_groups(&self) {
        let mut groups = session_groups(self.pid);
        if let Some(fg) = self
            .pty
            .as_deref()
            .and_then(|m| pty::foreground_group(m.as_fd()))
        {
            groups.push(fg);
        }
        groups.push(self.pid);
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            // SAFETY: a plain syscall; ESRCH (group already gone) is fine.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    /// The host is gone: kill the group and stop reporting. Returns
    /// whether this call ended the exec (false when it was already over).
    pub fn abort(&self) -> bool {
        let mut state = self.state();
        if !matches!(*state, State::Running | State::Reaped) {
            return false;
        }
        self.kill_groups();
        *state = State::Aborted;
        true
    }

    /// The host left (`problem` is `None`) or broke the protocol: kill the
    /// group and, if this ended the exec, say what was wrong with the frame.
    /// After `Exited` this is just the connection closing: nothing happens.
    pub fn host_failed(&self, writer: &Writer, problem: Option<String>) {
        if self.abort() {
            if let Some(message) = problem {
                let kind = ErrorKind::BadRequest;
                let _ = send(writer, &AgentMessage::Error { kind, message });
            }
        }
    }

    /// The main process was reaped: from now on signals are no longer
    /// sent (its pid may be reused), but the group can still be killed.
    pub fn reaped(&self) {
        let mut state = self.state();
        if *state == State::Running {
            *state = State::Reaped;
        }
    }

    /// Marks the exec over; false if it was aborted (send nothing then).
    fn finish(&self) -> bool {
        let mut state = self.state();
        if *state == State::Aborted {
            return false;
        }
        *state = State::Done;
        true
    }
}

/// Serves one exec request on `stream` until the process is reported.
pub fn run(stream: Stream, req: ExecRequest) {
    let writer = match stream.try_clone() {
        Ok(w) => Outbox::new(w),
        Err(e) => {
            crate::log!("exec: cannot clone connection: {e}");
            return;
        }
    };
    let argv0 = req.argv.first().map_or("", String::as_str);
    if req.detach {
        return detach(&writer, &req, argv0);
    }
    match spawn::spawn(&req) {
        Ok(child) => serve_child(stream, writer, child, &req),
        Err(e) => report_spawn_error(&writer, argv0, e),
    }
    // Dropping `stream` and the last writer closes the connection.
}

/// Starts a process nobody waits for: `Started`, then the connection
/// closes. Its exit status goes to a dropped receiver, which the reaper
/// tolerates, so it is reaped like any orphan.
fn detach(writer: &Writer, req: &ExecRequest, argv0: &str) {
    let conflict = [
        (req.pty.is_some(), "pty"),
        (req.stdin, "stdin"),
        (req.timeout_ms.is_some(), "timeout_ms"),
    ];
    if let Some((_, what)) = conflict.iter().find(|(set, _)| *set) {
        let message = format!("a detached exec cannot have {what}");
        return refuse(writer, ErrorKind::BadRequest, message);
    }
    match spawn::spawn(req) {
        Ok(child) => {
            let _ = send(
                writer,
                &AgentMessage::Started {
                    pid: child.pid as u32,
                },
            );
        }
        Err(e) => report_spawn_error(writer, argv0, e),
    }
}

/// Answers an exec that never started, the way a shell would where one
/// would (127 / 126 with a message on stderr).
fn report_spawn_error(writer: &Writer, argv0: &str, e: SpawnError) {
    let (stderr, code) = match e {
        SpawnError::NotFound => (format!("{argv0}: not found\n"), 127),
        SpawnError::NotExecutable(why) => (format!("{argv0}: {why}\n"), 126),
        SpawnError::Refused(kind, message) => return refuse(writer, kind, message),
    };
    let exited = AgentMessage::Exited(ExitStatus {
        code: Some(code),
        ..Default::default()
    });
    let _ = hold(writer, &AgentMessage::Stderr(stderr.into_bytes()))
        .and_then(|()| send(writer, &exited));
}

/// Answers with an error instead of starting anything.
fn refuse(writer: &Writer, kind: ErrorKind, message: String) {
    let _ = send(writer, &AgentMessage::Error { kind, message });
}

fn serve_child(stream: Stream, writer: Writer, child: Child, req: &ExecRequest) {
    let Child {
        pid,
        io,
        status,
        reaped,
    } = child;
    if let ChildIo::Pipes {
        stdin: None,
        stdout,
        stderr,
    } = io
    {
        let outputs = vec![
            Output::stdout(Arc::new(stdout), req.stdout_limit),
            Output::stderr(Arc::new(stderr), req.stderr_limit),
        ];
        return serve_quiet(&stream, &writer, pid, outputs, reaped, &status, req);
    }
    // Split the child's stdio into what each thread owns. `hold` is the
    // PTY slave, closed once the child is reaped (see `ChildIo::Pty`).
    let (outputs, input, pty_master, hold) = match io {
        ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let outputs = vec![
                Output::stdout(Arc::new(stdout), req.stdout_limit),
                Output::stderr(Arc::new(stderr), req.stderr_limit),
            ];
            (outputs, Input::Pipe(stdin), None, None)
        }
        ChildIo::Pty { master, slave } => {
            let master = Arc::new(master);
            let outputs = vec![Output::stdout(master.clone(), req.stdout_limit)];
            let input = Input::Pty {
                master: master.clone(),
                enabled: req.stdin,
            };
            (outputs, input, Some(master), Some(slave))
        }
        // `run` handles detached execs before spawning.
        ChildIo::Detached => return,
    };
    let group = Arc::new(Group {
        pid,
        pty: pty_master,
        state: Mutex::new(State::Running),
    });
    if send(&writer, &AgentMessage::Started { pid: pid as u32 }).is_err() {
        group.abort();
        return;
    }

    // Closed (dropped) once the main process is reaped: the output thread
    // then starts its grace period, the input thread stops writing stdin.
    let (exited_r, exited_w) = match sys::pipe() {
        Ok(pair) => pair,
        Err(e) => return abandon(&stream, &writer, &group, e),
    };
    let exited_r2 = match exited_r.try_clone() {
        Ok(fd) => fd,
        Err(e) => return abandon(&stream, &writer, &group, e),
    };
    let (w, g) = (writer.clone(), group.clone());
    let output = match thread("exec-out", move || {
        streams::pump_output(outputs, exited_r, &w, &g)
    }) {
        Ok(handle) => handle,
        Err(e) => return abandon(&stream, &writer, &group, e),
    };
    let reader = match stream.try_clone() {
        Ok(reader) => reader,
        Err(e) => return abandon(&stream, &writer, &group, e),
    };
    let (w, g) = (writer.clone(), group.clone());
    if let Err(e) = thread("exec-in", move || {
        streams::pump_input(reader, input, exited_r2, &w, &g)
    }) {
        return abandon(&stream, &writer, &group, e);
    }

    let (raw, timed_out) = wait(&status, deadline(req), &group);
    group.reaped();
    drop(hold);
    drop(exited_w);
    let dropped = output.join().unwrap_or_default();
    report_exit(&writer, &group, raw, timed_out, dropped);
    // Wakes the input thread, which sees the exec is over and leaves.
    stream.shutdown();
}

/// An exec with neither stdin nor a terminal: everything in this thread
/// (see [`quiet`]).
fn serve_quiet(
    stream: &Stream,
    writer: &Writer,
    pid: libc::pid_t,
    outputs: Vec<Output>,
    reaped: OwnedFd,
    status: &Receiver<reaper::WaitStatus>,
    req: &ExecRequest,
) {
    let group = Group {
        pid,
        pty: None,
        state: Mutex::new(State::Running),
    };
    // The host asks for an exec without stdin or a terminal only to collect
    // its output (`output()`), which has no use for the pid before that
    // output or the end: it goes out with the first of them.
    if hold(writer, &AgentMessage::Started { pid: pid as u32 }).is_err() {
        group.abort();
        return;
    }
    let ended = quiet::serve(quiet::Quiet {
        stream,
        writer,
        group: &group,
        outputs,
        reaped,
        status,
        deadline: deadline(req),
    });
    if let Some(ended) = ended {
        report_exit(writer, &group, ended.status, ended.timed_out, ended.dropped);
    }
    stream.shutdown();
}

fn deadline(req: &ExecRequest) -> Option<Instant> {
    req.timeout_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

/// Sends `Exited`, unless the exec was aborted.
fn report_exit(
    writer: &Writer,
    group: &Group,
    raw: Option<reaper::WaitStatus>,
    timed_out: bool,
    dropped: streams::Dropped,
) {
    let (code, signal) = raw.map_or((None, None), reaper::decode);
    let exited = AgentMessage::Exited(ExitStatus {
        code,
        signal,
        timed_out,
        stdout_dropped: dropped.stdout,
        stderr_dropped: dropped.stderr,
    });
    if group.finish() {
        let _ = send(writer, &exited);
    }
}

/// Waits for the main process's raw status, SIGKILLing the group when
/// `deadline` passes first. Returns the status (`None` only if the reaper
/// dropped the channel, which it does not) and whether the timeout fired.
fn wait(
    status: &Receiver<reaper::WaitStatus>,
    deadline: Option<Instant>,
    group: &Group,
) -> (Option<reaper::WaitStatus>, bool) {
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match status.recv_timeout(left) {
            Ok(raw) => return (Some(raw), false),
            Err(RecvTimeoutError::Disconnected) => return (None, false),
            Err(RecvTimeoutError::Timeout) => {
                group.kill();
                return (status.recv().ok(), true);
            }
        }
    }
    (status.recv().ok(), false)
}

/// Gives up on an exec the agent cannot serve (out of threads, fds).
fn abandon(stream: &Stream, writer: &Writer, group: &Group, e: io::Error) {
    if group.abort() {
        refuse(writer, ErrorKind::Failed, format!("exec: {e}"));
    }
    stream.shutdown();
}

fn thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(128 * 1024)
        .spawn(f)
}

/// The process groups of the processes in session `sid`, from /proc.
fn session_groups(sid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // After the command name: state ppid pgrp session ...
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let pgrp: libc::pid_t = fields.get(2)?.parse().ok()?;
            let session: libc::pid_t = fields.get(3)?.parse().ok()?;
            (session == sid && pgrp > 0).then_some(pgrp)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use supermachine_protocol::read_frame;

    #[test]
    fn held_frames_leave_with_the_next_one_in_a_single_write() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        theirs.set_nonblocking(true).expect("nonblocking");
        let writer = Outbox::new(Stream::from(ours));
        hold(&writer, &AgentMessage::Started { pid: 7 }).expect("hold");
        let mut buf = [0u8; 256];
        let nothing = (&theirs).read(&mut buf).expect_err("nothing is sent yet");
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);

        send(&writer, &AgentMessage::Exited(ExitStatus::default())).expect("send");
        let n = (&theirs).read(&mut buf).expect("one read");
        let mut bytes = &buf[..n];
        let first: AgentMessage = read_frame(&mut bytes).expect("first frame");
        let second: AgentMessage = read_frame(&mut bytes).expect("second frame");
        assert_eq!(first, AgentMessage::Started { pid: 7 });
        assert_eq!(second, AgentMessage::Exited(ExitStatus::default()));
        assert!(bytes.is_empty());

        // Nothing stays held: the next frame goes alone.
        send(&writer, &AgentMessage::Pong).expect("send");
        let n = (&theirs).read(&mut buf).expect("read");
        assert_eq!(
            read_frame::<AgentMessage, _>(&mut &buf[..n]).expect("frame"),
            AgentMessage::Pong
        );
    }
}
