//! Starting an exec'd process: PATH lookup, fork/exec, stdio pipes.
//!
//! Hand-written fork/exec instead of `std::process::Command`: when exec
//! fails, `Command::spawn` waits for the failed child itself and panics if
//! the reaper got there first, which would kill PID 1. Forking under the
//! reaper's lock (see [`reaper::fork_registered`]) also closes the race
//! between a fast-exiting child and its registration.

use crate::reaper::{self, Forked, WaitStatus};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc::Receiver;
use supermachine_protocol::ExecRequest;

/// Environment every exec starts from; request entries override or extend it.
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// A started process. Its pid is also its process group and session id.
pub struct Child {
    pub pid: libc::pid_t,
    /// Write end of the child's stdin; `None` when stdin is /dev/null.
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
    /// Yields the raw wait status once, from the reaper.
    pub status: Receiver<WaitStatus>,
}

/// Why a process could not be started.
#[derive(Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// The request itself is unusable (empty argv, NUL bytes, ...).
    BadRequest(String),
    /// No such program: a shell's exit code 127.
    NotFound,
    /// Found but cannot be executed: a shell's exit code 126. Holds the reason.
    NotExecutable(String),
    /// Anything else (bad cwd, out of processes, ...).
    Failed(String),
}

/// Where the child failed, reported through the exec-error pipe.
const STEP_CHDIR: i32 = 1;
const STEP_EXEC: i32 = 2;

/// Starts `req` in a new session.
pub fn spawn(req: &ExecRequest) -> Result<Child, SpawnError> {
    let argv0 = req
        .argv
        .first()
        .ok_or_else(|| SpawnError::BadRequest("empty argv".into()))?;
    let env = merge_env(&req.env)?;
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

    let failed = |what: &str, e: io::Error| SpawnError::Failed(format!("{what}: {e}"));
    let (stdin_child, stdin) = if req.stdin {
        let (r, w) = pipe().map_err(|e| failed("stdin pipe", e))?;
        (r, Some(File::from(w)))
    } else {
        (
            File::open("/dev/null")
                .map_err(|e| failed("/dev/null", e))?
                .into(),
            None,
        )
    };
    let (stdout, stdout_child) = pipe().map_err(|e| failed("stdout pipe", e))?;
    let (stderr, stderr_child) = pipe().map_err(|e| failed("stderr pipe", e))?;
    let (err_r, err_w) = pipe().map_err(|e| failed("pipe", e))?;

    let setup = ChildSetup {
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        report: err_w.as_raw_fd(),
        cwd: &cwd,
        program: &program,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
    };
    // SAFETY: the child branch runs only async-signal-safe code on data
    // prepared above.
    let (pid, status) = match unsafe { reaper::fork_registered() } {
        Ok(Forked::Child) => unsafe { exec_child(&setup) },
        Ok(Forked::Parent { pid, status }) => (pid, status),
        Err(e) => return Err(failed("fork", e)),
    };
    // Close our copies of the child's ends, so EOFs arrive when it exits.
    drop((stdin_child, stdout_child, stderr_child, err_w));

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
        return Err(child_error(step, errno, argv0, cwd_str));
    } else if !report.is_empty() {
        return Err(SpawnError::Failed(format!("{argv0}: child setup failed")));
    }
    Ok(Child {
        pid,
        stdin,
        stdout: File::from(stdout),
        stderr: File::from(stderr),
        status,
    })
}

fn child_error(step: i32, errno: i32, argv0: &str, cwd: &str) -> SpawnError {
    let err = io::Error::from_raw_os_error(errno);
    match (step, errno) {
        (STEP_CHDIR, _) => SpawnError::Failed(format!("chdir {cwd}: {err}")),
        // ENOENT after a successful lookup: usually a missing ELF interpreter
        // or `#!` program; shells report that as 127 too.
        (_, libc::ENOENT) | (_, libc::ENOTDIR) => SpawnError::NotFound,
        (_, libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY) => {
            SpawnError::NotExecutable(err.to_string())
        }
        _ => SpawnError::Failed(format!("exec {argv0}: {err}")),
    }
}

/// Everything the child needs, prepared before forking (no allocation after).
struct ChildSetup<'a> {
    stdio: [RawFd; 3],
    report: RawFd,
    cwd: &'a CStr,
    program: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// Runs in the forked child: async-signal-safe calls only.
unsafe fn exec_child(s: &ChildSetup<'_>) -> ! {
    // SAFETY: every call below is async-signal-safe and uses data prepared
    // before the fork; all pointers are valid and NUL-terminated.
    unsafe {
        // The agent blocks signals and ignores SIGPIPE; both are inherited
        // across exec and would break ordinary programs.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        // Own session and process group, so the agent can kill the whole
        // tree with one kill(-pid) when the host goes away.
        libc::setsid();
        // The agent keeps fds 0-2 open, so pipe fds are >= 3 and these
        // dup2s cannot clobber each other.
        for (target, &fd) in s.stdio.iter().enumerate() {
            libc::dup2(fd, target as RawFd);
        }
        if libc::chdir(s.cwd.as_ptr()) != 0 {
            report(s.report, STEP_CHDIR);
        }
        libc::execve(s.program.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr());
        report(s.report, STEP_EXEC);
    }
}

unsafe fn report(fd: RawFd, step: i32) -> ! {
    // SAFETY: async-signal-safe calls on a stack buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&step.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The base environment with the request's entries applied in order.
fn merge_env(extra: &[(String, String)]) -> Result<Vec<(String, String)>, SpawnError> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in extra {
        if k.is_empty() || k.contains('=') {
            return Err(SpawnError::BadRequest(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    Ok(env)
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
    CString::new(s).map_err(|_| SpawnError::BadRequest(format!("{what} contains a NUL byte")))
}

/// A close-on-exec pipe as (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_extends_the_base() {
        let env = merge_env(&[("HOME".into(), "/home/x".into()), ("A".into(), "1".into())]);
        let env = env.unwrap_or_default();
        assert!(env.contains(&("HOME".into(), "/home/x".into())));
        assert!(env.contains(&("A".into(), "1".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert!(matches!(
            merge_env(&[("A=B".into(), "1".into())]),
            Err(SpawnError::BadRequest(_))
        ));
    }

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
