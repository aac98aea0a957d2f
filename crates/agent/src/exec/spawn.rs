//! Starting an exec'd process: PATH lookup, fork/exec, stdio pipes.
//!
//! Hand-written fork/exec instead of `std::process::Command`: when exec
//! fails, `Command::spawn` waits for the failed child itself and panics if
//! the reaper got there first, which would kill PID 1. Forking under the
//! reaper's lock (see [`reaper::fork_registered`]) also closes the race
//! between a fast-exiting child and its registration.

use super::pty;
use crate::reaper::{self, Forked, WaitStatus};
use crate::user::{self, User, UserError};
use crate::{env, sys};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc::Receiver;
use supermachine_protocol::{ErrorKind, ExecRequest};

/// A started process. Its pid is also its process group and session id.
pub struct Child {
    /// The process, also the id of its process group and session.
    pub pid: libc::pid_t,
    /// The agent's ends of its stdio.
    pub io: ChildIo,
    /// Yields the raw wait status once, from the reaper.
    pub status: Receiver<WaitStatus>,
    /// Reads EOF once `status` holds the status (for `poll`).
    pub reaped: OwnedFd,
}

/// The agent's ends of the child's stdio. Every fd here is non-blocking.
pub enum ChildIo {
    /// Without a terminal: a pipe per stream.
    Pipes {
        /// Write end of the child's stdin; `None` when stdin is /dev/null.
        stdin: Option<OwnedFd>,
        /// Read end of the child's stdout.
        stdout: OwnedFd,
        /// Read end of the child's stderr.
        stderr: OwnedFd,
    },
    /// With `ExecRequest::pty`: the child's fds 0-2 are one terminal, so
    /// its stdout and stderr arrive merged on the master.
    Pty {
        /// The terminal's master: the child's output, its input, resizes.
        master: OwnedFd,
        /// The agent's copy of the terminal, held until the child is
        /// reaped: the master only reports EOF (EIO) once no slave is
        /// open, so this keeps a fast-exiting child's output from racing
        /// with that EOF.
        slave: OwnedFd,
    },
    /// stdin /dev/null, stdout and stderr the agent's own (the console).
    Detached,
}

/// Why a process could not be started.
#[derive(Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// No such program: a shell's exit code 127.
    NotFound,
    /// Found but cannot be executed: a shell's exit code 126. Holds the reason.
    NotExecutable(String),
    /// Anything else (bad request, unknown user, bad cwd, out of
    /// processes, ...), answered with an `Error` frame of this kind.
    Refused(ErrorKind, String),
}

fn bad_request(message: impl Into<String>) -> SpawnError {
    SpawnError::Refused(ErrorKind::BadRequest, message.into())
}

fn failed(what: &str, e: io::Error) -> SpawnError {
    SpawnError::Refused(ErrorKind::Failed, format!("{what}: {}", sys::describe(&e)))
}

/// Where the child failed, reported through the exec-error pipe.
const STEP_CHDIR: i32 = 1;
const STEP_EXEC: i32 = 2;
const STEP_USER: i32 = 3;
const STEP_TTY: i32 = 4;

/// The child's fds 0-2 and what the agent keeps.
struct Stdio {
    parent: ChildIo,
    child: [RawFd; 3],
    /// The child's ends, owned here until the fork is done.
    child_owned: Vec<OwnedFd>,
    /// The terminal the child makes its controlling TTY.
    ctty: Option<RawFd>,
}

fn stdio(req: &ExecRequest, user: Option<&User>) -> Result<Stdio, SpawnError> {
    let nonblocking =
        |fd: &OwnedFd, what: &str| sys::set_nonblocking(fd.as_fd()).map_err(|e| failed(what, e));
    if req.detach {
        let null = sys::dev_null().map_err(|e| failed("/dev/null", e))?;
        return Ok(Stdio {
            parent: ChildIo::Detached,
            child: [null.as_raw_fd(), 1, 2],
            child_owned: vec![null],
            ctty: None,
        });
    }
    if let Some(size) = req.pty {
        let pty = pty::open(size).map_err(|e| failed("open pty", e))?;
        nonblocking(&pty.master, "pty")?;
        if let Some(u) = user {
            // What grantpt would do: the user owns its terminal, so it can
            // reopen it (/dev/tty, `tty`-using programs) and chmod it.
            // SAFETY: plain syscall on a live fd; -1 keeps the group.
            unsafe { libc::fchown(pty.slave.as_raw_fd(), u.uid, u32::MAX) };
        }
        let fd = pty.slave.as_raw_fd();
        return Ok(Stdio {
            parent: ChildIo::Pty {
                master: pty.master,
                slave: pty.slave,
            },
            child: [fd; 3],
            child_owned: Vec::new(),
            ctty: Some(fd),
        });
    }
    let (stdin_child, stdin) = if req.stdin {
        let (r, w) = sys::pipe().map_err(|e| failed("stdin pipe", e))?;
        nonblocking(&w, "stdin pipe")?;
        (r, Some(w))
    } else {
        (sys::dev_null().map_err(|e| failed("/dev/null", e))?, None)
    };
    let (stdout, stdout_child) = sys::pipe().map_err(|e| failed("stdout pipe", e))?;
    let (stderr, stderr_child) = sys::pipe().map_err(|e| failed("stderr pipe", e))?;
    nonblocking(&stdout, "stdout pipe")?;
    nonblocking(&stderr, "stderr pipe")?;
    Ok(Stdio {
        parent: ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        },
        child: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        child_owned: vec![stdin_child, stdout_child, stderr_child],
        ctty: None,
    })
}

/// Starts `req` in a new session.
pub fn spawn(req: &ExecRequest) -> Result<Child, SpawnError> {
    let argv0 = req.argv.first().ok_or_else(|| bad_request("empty argv"))?;
    let user = match req.user.as_deref() {
        None => None,
        Some(spec) => Some(user::resolve(spec).map_err(|e| match e {
            UserError::NotFound(m) => SpawnError::Refused(ErrorKind::NotFound, m),
            UserError::Invalid(m) => bad_request(m),
        })?),
    };
    let env = env::build_env(req, user.as_ref())?;
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    // The protocol promises the root, not whatever directory the agent is in.
    let cwd_str = req.cwd.as_deref().unwrap_or("/");
    let program = resolve(argv0, path_var, Some(cwd_str))?;

    let program = cstring(program, "program path")?;
    let argv = req
        .argv
        .iter()
        .map(|a| cstring(a.clone(), "argv"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}"), "env"))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = cstring(cwd_str.to_string(), "cwd")?;
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    let io = stdio(req, user.as_ref())?;
    let (err_r, err_w) = sys::pipe().map_err(|e| failed("pipe", e))?;
    let setup = ChildSetup {
        stdio: io.child,
        ctty: io.ctty,
        report: err_w.as_raw_fd(),
        user: user.as_ref(),
        cwd: &cwd,
        program: &program,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
    };
    // SAFETY: the child branch runs only async-signal-safe code on data
    // prepared above.
    let (pid, status, reaped) = match unsafe { reaper::fork_registered() } {
        // SAFETY: the freshly forked child; `setup` was made before the
        // fork and holds only valid, NUL-terminated strings.
        Ok(Forked::Child) => unsafe { exec_child(&setup) },
        Ok(Forked::Parent {
            pid,
            status,
            reaped,
        }) => (pid, status, reaped),
        Err(e) => return Err(failed("fork", e)),
    };
    // Close our copies of the child's ends, so EOFs arrive when it exits.
    drop((io.child_owned, err_w));

    // The error pipe closes on a successful exec (CLOEXEC) and carries
    // (step, errno) otherwise. On failure the child's status goes to a
    // dropped receiver, which the reaper tolerates.
    let mut report = Vec::with_capacity(8);
    if let Err(e) = File::from(err_r).read_to_end(&mut report) {
        return Err(failed("reading exec status", e));
    }
    if report.len() == 8 {
        let step = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        return Err(child_error(step, errno, req, cwd_str));
    } else if !report.is_empty() {
        return Err(SpawnError::Refused(
            ErrorKind::Failed,
            format!("{argv0}: child setup failed"),
        ));
    }
    Ok(Child {
        pid,
        io: io.parent,
        status,
        reaped,
    })
}

fn child_error(step: i32, errno: i32, req: &ExecRequest, cwd: &str) -> SpawnError {
    let err = sys::describe(&io::Error::from_raw_os_error(errno));
    let argv0 = req.argv.first().map_or("", String::as_str);
    let fail = |m: String| SpawnError::Refused(ErrorKind::Failed, m);
    match (step, errno) {
        (STEP_CHDIR, _) => fail(format!("chdir {cwd}: {err}")),
        (STEP_USER, _) => fail(format!(
            "switch to user {}: {err}",
            req.user.as_deref().unwrap_or("")
        )),
        (STEP_TTY, _) => fail(format!("set controlling terminal: {err}")),
        // ENOENT after a successful lookup: usually a missing ELF interpreter
        // or `#!` program; shells report that as 127 too.
        (_, libc::ENOENT) | (_, libc::ENOTDIR) => SpawnError::NotFound,
        (_, libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY) => {
            SpawnError::NotExecutable(err)
        }
        _ => fail(format!("exec {argv0}: {err}")),
    }
}

/// Everything the child needs, prepared before forking (no allocation after).
struct ChildSetup<'a> {
    stdio: [RawFd; 3],
    ctty: Option<RawFd>,
    report: RawFd,
    user: Option<&'a User>,
    cwd: &'a CStr,
    program: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// Runs in the forked child: async-signal-safe calls only.
///
/// # Safety
///
/// Call only in a freshly forked child of a multi-threaded process, with
/// `s` prepared before the fork: every pointer in it valid and every
/// string NUL-terminated. Nothing here allocates or takes a lock.
unsafe fn exec_child(s: &ChildSetup<'_>) -> ! {
    // The agent blocks signals and ignores SIGPIPE, and whoever started
    // it may have ignored more (a background job of a script ignores
    // SIGINT and SIGQUIT); a blocked mask and ignored signals are
    // inherited across exec and would break ordinary programs (^C that
    // does nothing).
    // SAFETY: sigset_t is plain data; all-zero is a valid value.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a live sigset_t the call only writes.
    unsafe { libc::sigemptyset(&mut empty) };
    // SAFETY: a valid set to install; the old mask is not asked for (null).
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
    // SAFETY: sigaction is plain data; all-zero is a valid value.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // Every signal number Linux has (1..=64); SIGKILL and SIGSTOP, whose
    // action cannot change, just fail, as do numbers libc keeps.
    for signal in 1..=64 {
        // SAFETY: a valid action (the default); the old one is not asked for.
        unsafe { libc::sigaction(signal, &dfl, std::ptr::null_mut()) };
    }
    // Own session and process group, so the agent can kill the whole
    // tree with one kill(-pid) when the host goes away.
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
    // A new session has no terminal; this one becomes it, with the
    // session as its foreground group (so ^C reaches the child).
    if let Some(tty) = s.ctty {
        // SAFETY: TIOCSCTTY takes an integer argument, no memory.
        if unsafe { libc::ioctl(tty, libc::TIOCSCTTY, 0) } != 0 {
            report(s.report, STEP_TTY);
        }
    }
    // The agent keeps fds 0-2 open, so pipe fds are >= 3 and these
    // dup2s cannot clobber each other (a detached child's 1 and 2 are
    // the agent's own, where dup2 onto itself is a no-op).
    for (target, &fd) in s.stdio.iter().enumerate() {
        // SAFETY: dup2 takes plain integers.
        unsafe { libc::dup2(fd, target as RawFd) };
    }
    // Groups first, then gid, then uid: after setuid the rest would be
    // refused. Raw syscalls: they change only this (the only) thread,
    // without glibc's all-threads setxid machinery.
    if let Some(u) = s.user {
        let n = u.groups.len() as libc::c_long;
        // SAFETY: `groups` is a live slice of `n` gids the call only reads.
        let groups_set = unsafe { libc::syscall(libc::SYS_setgroups, n, u.groups.as_ptr()) } == 0;
        // SAFETY: setgid takes a plain integer.
        let gid_set = groups_set
            && unsafe { libc::syscall(libc::SYS_setgid, libc::c_long::from(u.gid)) } == 0;
        // SAFETY: setuid takes a plain integer.
        let uid_set =
            gid_set && unsafe { libc::syscall(libc::SYS_setuid, libc::c_long::from(u.uid)) } == 0;
        if !uid_set {
            report(s.report, STEP_USER);
        }
    }
    // After the switch, so the user needs access to its directory, as
    // with `su` or `docker exec -u`.
    // SAFETY: `cwd` is a live NUL-terminated string.
    if unsafe { libc::chdir(s.cwd.as_ptr()) } != 0 {
        report(s.report, STEP_CHDIR);
    }
    // SAFETY: the program is a NUL-terminated string; argv and envp are
    // null-terminated arrays of NUL-terminated strings, all made before
    // the fork and alive until exec replaces this process.
    unsafe { libc::execve(s.program.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr()) };
    report(s.report, STEP_EXEC)
}

/// Tells the parent, through the close-on-exec pipe `fd`, which step
/// failed and with what errno, then ends the child. Async-signal-safe:
/// only system calls on a stack buffer.
fn report(fd: RawFd, step: i32) -> ! {
    // SAFETY: __errno_location takes nothing and returns this thread's
    // errno slot.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: that slot is valid for the thread's whole life.
    let errno = unsafe { *slot };
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: `buf` is a live buffer of `buf.len()` readable bytes.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    // SAFETY: _exit takes a plain integer and ends the process.
    unsafe { libc::_exit(127) }
}

/// Finds the program like `execvp` would, reporting a shell's distinction
/// between "not found" (127) and "found but not runnable" (126).
pub fn resolve(argv0: &str, path_var: &str, cwd: Option<&str>) -> Result<String, SpawnError> {
    if argv0.is_empty() {
        return Err(SpawnError::NotFound);
    }
    if argv0.contains('/') {
        return check(argv0, cwd).map(|()| argv0.to_string());
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        // An empty PATH entry means the working directory.
        let candidate = if dir.is_empty() {
            argv0.to_string()
        } else {
            format!("{dir}/{argv0}")
        };
        match check(&candidate, cwd) {
            Ok(()) => return Ok(candidate),
            Err(SpawnError::NotExecutable(why)) => denied = denied.or(Some(why)),
            Err(_) => {}
        }
    }
    Err(denied.map_or(SpawnError::NotFound, SpawnError::NotExecutable))
}

/// Checks that `path` (relative to `cwd`, which the child will enter) is a
/// file with an execute bit; root may run any such file.
fn check(path: &str, cwd: Option<&str>) -> Result<(), SpawnError> {
    let full = match cwd {
        Some(cwd) if !path.starts_with('/') => Path::new(cwd).join(path),
        _ => Path::new(path).to_path_buf(),
    };
    let meta = match std::fs::metadata(&full) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(SpawnError::NotExecutable("Permission denied".into()))
        }
        Err(_) => return Err(SpawnError::NotFound),
    };
    if meta.is_dir() {
        return Err(SpawnError::NotExecutable("Is a directory".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(SpawnError::NotExecutable("Permission denied".into()));
    }
    Ok(())
}

fn cstring(s: String, what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| bad_request(format!("{what} contains a NUL byte")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_path_like_a_shell() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin:/usr/bin", None),
            Ok("/bin/sh".into())
        );
        assert_eq!(
            resolve("no-such-program-xyz", "/bin:/usr/bin", None),
            Err(SpawnError::NotFound)
        );
        assert_eq!(resolve("/no/such", "/bin", None), Err(SpawnError::NotFound));
        assert!(matches!(
            resolve("/etc/passwd", "", None),
            Err(SpawnError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve("/", "", None),
            Err(SpawnError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve("bin", "/", None),
            Err(SpawnError::NotExecutable(_))
        ));
        assert_eq!(resolve("./sh", "", Some("/bin")), Ok("./sh".into()));
    }
}
