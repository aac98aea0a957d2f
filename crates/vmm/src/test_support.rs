//! Helpers for tests of this crate and its integration tests (behind the
//! `test-utils` feature there): a watchdog for code that may loop, a
//! connection made (or a socket served) as another user, and snapshot
//! states to write.
//!
//! Test code: a helper that cannot do its job panics, which fails the test
//! that called it, so `expect` is the right tool here.
#![allow(clippy::expect_used)]

use crate::snapshot::bundle::SnapshotState;
use crate::snapshot::limits::layout_for;
use crate::snapshot::{FpuState, MachineState, VcpuState};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Runs `body` on a thread of its own and fails the calling test if it
/// has not finished within a minute: code that loops for ever (what some
/// tests look for) then fails its test instead of hanging the whole run.
/// Such a thread is left behind, spinning, until the test binary exits.
pub fn within_a_minute<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = done.send(body());
    });
    match finished.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("still running after a minute: something loops or waits for ever")
        }
        // The body panicked: report its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body ended without sending its result"),
        },
    }
}

/// The uid of `nobody`, the other user the tests connect as.
pub const NOBODY: u32 = 65534;

/// Whether tests can act as another user here (they run as root). Not
/// root while `SUPERMACHINE_REQUIRE_ROOT` is set (`cargo xtask test` sets
/// it in CI) panics instead: there a skipped check is a failure.
pub fn can_switch_user() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    if !root && std::env::var_os("SUPERMACHINE_REQUIRE_ROOT").is_some() {
        panic!("SUPERMACHINE_REQUIRE_ROOT is set and this test needs root to act as another user: run the tests as root");
    }
    root
}

/// A child process that connects to the Unix socket at `path` as `uid`,
/// sends `bytes`, and waits for the other end to close the connection.
/// Call [`OtherUser::closed`] while serving the socket.
pub struct OtherUser {
    pid: libc::pid_t,
}

impl OtherUser {
    /// Forks the child, which switches to `uid` (so the test must run as
    /// root: [`can_switch_user`]) and connects. Panics if the fork fails; a
    /// child that cannot connect reports it through [`closed`](Self::closed).
    pub fn connect(uid: u32, path: &Path, bytes: &[u8]) -> OtherUser {
        // Everything the child needs is made before the fork: after it,
        // only raw system calls (this test binary has many threads).
        let addr = sockaddr(path);
        // SAFETY: fork in a test; the child below makes only system calls
        // on memory prepared before the fork, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            child_connect(uid, &addr, bytes);
        }
        OtherUser { pid }
    }

    /// Forks a child that switches to `uid` (the test must run as root:
    /// [`can_switch_user`]), listens on `path` and accepts connections
    /// until dropped: a socket served by another user. Returns once it
    /// listens; panics if the child could not. `path`'s directory must be
    /// writable by `uid`.
    pub fn serve(uid: u32, path: &Path) -> OtherUser {
        let addr = sockaddr(path);
        let mut ready = [0 as libc::c_int; 2];
        // SAFETY: `ready` has room for the two descriptors pipe writes.
        let piped = unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(piped, 0, "pipe: {}", std::io::Error::last_os_error());
        // SAFETY: as in `connect`: only system calls in the child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            child_serve(uid, &addr, ready[1]);
        }
        // SAFETY: our copy of the write end; the child holds its own, so
        // the read below ends when the child signals or dies.
        unsafe { libc::close(ready[1]) };
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is a live one-byte buffer.
        let n = unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
        // SAFETY: the read end is ours and not used again.
        unsafe { libc::close(ready[0]) };
        let child = OtherUser { pid };
        assert_eq!(n, 1, "the child serving as uid {uid} could not listen");
        child
    }

    /// `Some(true)` once the child saw the connection closed unanswered,
    /// `Some(false)` if it was answered or could not connect, `None` while
    /// it still waits.
    pub fn closed(&self) -> Option<bool> {
        let mut status = 0;
        // SAFETY: waits on our own child without blocking.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return None;
        }
        Some(r == self.pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        if self.closed().is_none() {
            // SAFETY: kill takes plain integers; the pid is our own child,
            // not reaped yet, so it names no other process.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            // SAFETY: a null status pointer is allowed; our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// The forked child of [`OtherUser::connect`]: raw system calls only, on
/// memory prepared before the fork, and it never returns into the test
/// harness.
fn child_connect(uid: u32, addr: &libc::sockaddr_un, bytes: &[u8]) -> ! {
    // The raw call changes this (only) thread's uid: the child has no
    // other thread.
    // SAFETY: setuid takes a plain integer.
    if unsafe { libc::syscall(libc::SYS_setuid, uid as libc::c_long) } != 0 {
        // SAFETY: _exit takes a plain integer and ends the process.
        unsafe { libc::_exit(2) };
    }
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` points to a live sockaddr_un of `len` bytes.
    if fd < 0 || unsafe { libc::connect(fd, (addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(3) };
    }
    // MSG_NOSIGNAL: a connection closed already must not kill the child
    // with SIGPIPE.
    // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes.
    unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
    let mut buf = [0u8; 64];
    // An end, or a reset (closed with what we sent unread): closed without
    // a word. Anything else: answered.
    // SAFETY: `buf` is a live buffer of `buf.len()` writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: __errno_location takes nothing and returns this thread's
    // errno slot.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: that slot is valid for the thread's whole life.
    let reset = n < 0 && unsafe { *errno } == libc::ECONNRESET;
    // SAFETY: _exit takes a plain integer and ends the process.
    unsafe { libc::_exit(if n == 0 || reset { 0 } else { 1 }) }
}

/// The address of the Unix socket at `path`.
fn sockaddr(path: &Path) -> libc::sockaddr_un {
    let mut addr: libc::sockaddr_un = unsafe_zeroed();
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let raw = path.as_os_str().as_bytes();
    assert!(raw.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(raw) {
        *dst = *src as libc::c_char;
    }
    addr
}

/// The forked child of [`OtherUser::serve`]: becomes `uid`, listens,
/// writes a byte to `ready`, then accepts (and holds) connections until it
/// is killed. Raw system calls only, as in [`child_connect`].
fn child_serve(uid: u32, addr: &libc::sockaddr_un, ready: libc::c_int) -> ! {
    // SAFETY: setgid and setuid take plain integers; the raw calls change
    // this (the child's only) thread.
    let switched = unsafe { libc::syscall(libc::SYS_setgid, uid as libc::c_long) } == 0
        // SAFETY: as above.
        && unsafe { libc::syscall(libc::SYS_setuid, uid as libc::c_long) } == 0;
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` points to a live sockaddr_un of `len` bytes.
    let bound =
        fd >= 0 && unsafe { libc::bind(fd, (addr as *const libc::sockaddr_un).cast(), len) } == 0;
    // SAFETY: listen takes plain integers.
    if !switched || !bound || unsafe { libc::listen(fd, 16) } != 0 {
        // SAFETY: _exit takes a plain integer and ends the process.
        unsafe { libc::_exit(2) };
    }
    // SAFETY: a live one-byte buffer.
    unsafe { libc::write(ready, b"r".as_ptr().cast(), 1) };
    loop {
        // Accepted connections stay open (never read) until the kill.
        // SAFETY: null address pointers are allowed.
        if unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) } < 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(3) };
        }
    }
}

fn unsafe_zeroed() -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Lets any user reach the socket at `path` (and its directory), so that
/// only the server's own check on accept stands in another user's way.
pub fn open_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let all = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    if let Some(dir) = path.parent() {
        all(dir, 0o777).expect("chmod dir");
    }
    all(path, 0o666).expect("chmod socket");
}

/// A snapshot state of `vcpus` blank vCPUs and `memory_mib` MiB laid out
/// as a boot makes it, with no devices: it encodes and passes or fails
/// the restore's checks, but no KVM would take its vCPUs.
pub fn snapshot_state(vcpus: usize, memory_mib: u64) -> SnapshotState {
    let vcpu = VcpuState {
        cpuid: Vec::new(),
        mp_state: Default::default(),
        regs: Default::default(),
        sregs: Default::default(),
        fpu: FpuState::default(),
        xsave: Vec::new(),
        xcrs: Default::default(),
        debug_regs: Default::default(),
        lapic: Default::default(),
        msrs: Vec::new(),
        vcpu_events: Default::default(),
        tsc_khz: None,
    };
    SnapshotState {
        memory_mib,
        memory: layout_for(memory_mib),
        machine: MachineState {
            vm: Default::default(),
            vcpus: vec![vcpu; vcpus],
        },
        serial: Default::default(),
        devices: Vec::new(),
    }
}
