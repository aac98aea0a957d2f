//! Child reaping and signal handling.
//!
//! As PID 1 the agent inherits every orphan in the guest and must reap it,
//! yet an exec also needs its own child's exit status. One thread owns
//! `waitpid(-1)` and hands each status to whoever registered that pid;
//! nothing else in the agent may wait for children (in particular no
//! `std::process::Child::wait`, which would race it and lose statuses).
//!
//! Signals are blocked in every thread (the mask is set before any thread
//! exists, and threads inherit it) and consumed synchronously by that same
//! thread with `sigwaitinfo`, so there are no async signal handlers at all.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// Raw `waitpid` status of a child.
pub type WaitStatus = libc::c_int;

/// Who waits for one pid: the status goes down the channel, then the
/// write end of the "reaped" pipe is closed, so a thread polling fds can
/// wait for the exit in the same `poll` as for everything else.
struct Waiter {
    status: SyncSender<WaitStatus>,
    reaped: OwnedFd,
}

/// Pids whose exit someone is waiting for.
static WAITERS: LazyLock<Mutex<HashMap<libc::pid_t, Waiter>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn waiters() -> MutexGuard<'static, HashMap<libc::pid_t, Waiter>> {
    // A poisoned map is still a consistent map: inserts and removes are
    // single operations.
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Outcome of [`fork_registered`].
pub enum Forked {
    /// In the new child. Only async-signal-safe calls are allowed from
    /// here on (other threads may hold locks that will never be released):
    /// set up and exec, or `_exit`.
    Child,
    /// In the agent. `status` yields the child's raw wait status once;
    /// `reaped` reads EOF once that status is there.
    Parent {
        /// The child's pid, already registered with the reaper.
        pid: libc::pid_t,
        /// Yields the raw wait status once, when the reaper has reaped it.
        status: Receiver<WaitStatus>,
        /// Read end of the "reaped" pipe: EOF once `status` has the status.
        reaped: OwnedFd,
    },
}

/// Forks with the waiter map locked and registers the child before
/// unlocking, so the reaper cannot dispatch the child's status before its
/// waiter exists, however fast the child dies. Statuses of unregistered
/// pids are then genuinely orphans and can be dropped, which keeps memory
/// bounded (an "unclaimed" map would grow with every orphan in the guest).
///
/// # Safety
/// In the [`Forked::Child`] case the caller must obey the rules stated
/// there.
pub unsafe fn fork_registered() -> io::Result<Forked> {
    let (tx, rx) = sync_channel(1);
    // Close-on-exec: the child (and any sibling forked meanwhile) drops
    // its copy of the write end when it execs.
    let (reaped_r, reaped_w) = crate::sys::pipe()?;
    let mut map = waiters();
    // SAFETY: see the function contract.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child's copy of the lock stays locked forever; never touch it.
        std::mem::forget(map);
        return Ok(Forked::Child);
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    map.insert(
        pid,
        Waiter {
            status: tx,
            reaped: reaped_w,
        },
    );
    Ok(Forked::Parent {
        pid,
        status: rx,
        reaped: reaped_r,
    })
}

/// Reaps every child that has exited, without blocking.
pub fn reap_all() {
    loop {
        let mut status: WaitStatus = 0;
        // SAFETY: plain syscall writing into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            // A waiter that went away (its exec was abandoned) is fine.
            let waiter = waiters().remove(&pid);
            if let Some(Waiter { status: tx, reaped }) = waiter {
                let _ = tx.send(status);
                // After the send: whoever polls `reaped` finds the status.
                drop(reaped);
            }
            continue;
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return; // 0: children remain, none exited; ECHILD: no children.
    }
}

/// Blocks `signals` in the calling thread and in every thread it creates
/// later. Call before starting any thread.
pub fn block(signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; the old mask is not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Starts the thread that reaps on SIGCHLD and passes every other signal of
/// `signals` (which must already be [`block`]ed) to `on_signal`.
pub fn start(signals: &[libc::c_int], on_signal: fn(libc::c_int)) -> io::Result<()> {
    let mut all = signals.to_vec();
    all.push(libc::SIGCHLD);
    let set = sigset(&all);
    std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            // Children may have exited before this thread existed; their
            // SIGCHLD is still pending, but draining first costs nothing.
            reap_all();
            loop {
                // SAFETY: `set` is initialised; siginfo is not requested.
                let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
                match sig {
                    libc::SIGCHLD => reap_all(),
                    sig if sig > 0 => on_signal(sig),
                    _ => {} // EINTR
                }
            }
        })?;
    Ok(())
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all-zero is a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t the call only writes.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: as above; it only fails for invalid signal numbers,
        // which callers do not pass.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Splits a raw wait status into (exit code, terminating signal).
pub fn decode(status: WaitStatus) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}
