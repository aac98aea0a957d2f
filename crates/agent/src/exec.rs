//! One `Exec` connection: start the process, stream its output, feed its
//! stdin, report how it ended.
//!
//! Threads per exec: this one (waits for the exit status), one per output
//! pipe, one reading host frames. Output frames share the socket behind a
//! mutex, one whole frame per lock. Every stream is bounded: a slow host
//! stalls the output pipes and so the child, and a child that does not
//! read stdin stalls the host's stdin frames.
//!
//! If the host goes away before `Exited` (connection closed, reset, or a
//! malformed frame), the child's whole process group is SIGKILLed: nothing
//! keeps running that nobody can see or stop. A read EOF counts as going
//! away, so the host must end stdin with `CloseStdin`, never by
//! half-closing its side of the socket.

use crate::reaper;
use crate::spawn::{self, Child, SpawnError};
use crate::transport::Stream;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ErrorKind, ExecRequest, FrameError, HostMessage,
    MAX_CHUNK,
};

/// The socket's write side, shared by every thread of one exec.
type Writer = Arc<Mutex<Stream>>;

fn send(writer: &Writer, msg: &AgentMessage) -> Result<(), FrameError> {
    let stream = writer.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut &*stream, msg)
}

/// The child's process group, killable until the exec is reported done.
struct Group {
    pgid: libc::pid_t,
    finished: Mutex<bool>,
}

impl Group {
    fn finished(&self) -> MutexGuard<'_, bool> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills every process in the group, unless `Exited` was already sent:
    /// after that the group id may belong to someone else.
    fn kill(&self) {
        let finished = self.finished();
        if !*finished {
            // SAFETY: plain syscall; ESRCH (group already gone) is fine.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

/// Serves one exec request on `stream` until the process is reported.
pub fn run(stream: Stream, req: ExecRequest) {
    let writer: Writer = match stream.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            crate::log!("exec: cannot clone connection: {e}");
            return;
        }
    };
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    let child = match spawn::spawn(&req) {
        Ok(child) => child,
        Err(e) => return report_spawn_error(&writer, &argv0, e),
    };
    serve_child(stream, writer, child);
    // Dropping `stream` and the last writer closes the connection.
}

/// Answers an exec that never started, the way a shell would where one
/// would (127 / 126 with a message on stderr).
fn report_spawn_error(writer: &Writer, argv0: &str, e: SpawnError) {
    let (stderr, code) = match e {
        SpawnError::NotFound => (format!("{argv0}: not found\n"), 127),
        SpawnError::NotExecutable(why) => (format!("{argv0}: {why}\n"), 126),
        SpawnError::BadRequest(message) => return refuse(writer, ErrorKind::BadRequest, message),
        SpawnError::Failed(message) => return refuse(writer, ErrorKind::Failed, message),
    };
    let _ = send(writer, &AgentMessage::Stderr(stderr.into_bytes())).and_then(|()| {
        send(
            writer,
            &AgentMessage::Exited {
                code: Some(code),
                signal: None,
            },
        )
    });
}

/// Answers with an error instead of starting anything.
fn refuse(writer: &Writer, kind: ErrorKind, message: String) {
    let _ = send(writer, &AgentMessage::Error { kind, message });
}

fn serve_child(stream: Stream, writer: Writer, child: Child) {
    let Child {
        pid,
        stdin,
        stdout,
        stderr,
        status,
    } = child;
    let group = Arc::new(Group {
        pgid: pid,
        finished: Mutex::new(false),
    });
    if send(&writer, &AgentMessage::Started { pid: pid as u32 }).is_err() {
        return group.kill();
    }

    let mut pumps: Vec<JoinHandle<()>> = Vec::with_capacity(2);
    for (pipe, stdout) in [(stdout, true), (stderr, false)] {
        let (w, g) = (writer.clone(), group.clone());
        match thread("exec-out", move || pump_output(pipe, stdout, &w, &g)) {
            Ok(handle) => pumps.push(handle),
            Err(e) => return abandon(&stream, &writer, &group, e),
        }
    }
    let reader = match stream.try_clone() {
        Ok(reader) => reader,
        Err(e) => return abandon(&stream, &writer, &group, e),
    };
    let (w, g) = (writer.clone(), group.clone());
    if let Err(e) = thread("exec-in", move || pump_input(reader, stdin, &w, &g)) {
        return abandon(&stream, &writer, &group, e);
    }

    // The sender lives in the reaper's map until the child is reaped, so
    // an error here cannot happen; report "unknown" rather than hang.
    let (code, signal) = status.recv().map_or((None, None), reaper::decode);
    for pump in pumps {
        let _ = pump.join();
    }
    *group.finished() = true;
    let _ = send(&writer, &AgentMessage::Exited { code, signal });
    // Wakes the input thread, which sees `finished` and leaves quietly.
    stream.shutdown();
}

/// Gives up on an exec the agent cannot serve (out of threads, fds).
fn abandon(stream: &Stream, writer: &Writer, group: &Group, e: io::Error) {
    group.kill();
    let message = format!("exec: {e}");
    let _ = send(
        writer,
        &AgentMessage::Error {
            kind: ErrorKind::Failed,
            message,
        },
    );
    stream.shutdown();
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(128 * 1024)
        .spawn(f)
}

/// Copies one output pipe into frames until EOF.
fn pump_output(mut pipe: File, stdout: bool, writer: &Writer, group: &Group) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let data = buf[..n].to_vec();
        let msg = if stdout {
            AgentMessage::Stdout(data)
        } else {
            AgentMessage::Stderr(data)
        };
        if send(writer, &msg).is_err() {
            // The host is gone; dropping the pipe makes late writers fail
            // too, should anything survive the kill.
            return group.kill();
        }
    }
}

/// Reads host frames: stdin data, end of stdin, or the end of the host.
fn pump_input(reader: Stream, mut stdin: Option<File>, writer: &Writer, group: &Group) {
    loop {
        match read_frame::<HostMessage, _>(&mut &reader) {
            Ok(HostMessage::Stdin(data)) => {
                // A child that closed its stdin just loses the rest, as
                // with a shell pipe; stdin frames without `stdin: true`
                // are dropped the same way.
                if let Some(pipe) = stdin.as_mut() {
                    if pipe.write_all(&data).is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(HostMessage::CloseStdin) => stdin = None,
            Err(e) => {
                let done = *group.finished();
                if !done {
                    if matches!(e, FrameError::Decode(_) | FrameError::TooLarge(_)) {
                        let message = format!("bad frame during exec: {e}");
                        let msg = AgentMessage::Error {
                            kind: ErrorKind::BadRequest,
                            message,
                        };
                        let _ = send(writer, &msg);
                    }
                    group.kill();
                    reader.shutdown();
                }
                return;
            }
        }
    }
}
