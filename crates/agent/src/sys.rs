//! Thin wrappers over the raw fd syscalls the exec code needs: pipes,
//! non-blocking mode, `poll`, `read` and `write` on borrowed fds.
//!
//! The exec code polls instead of blocking in `read`/`write`, because a
//! blocking call on a pipe that a daemon keeps open could never be
//! interrupted, and the thread making it would leak.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Returns the result, or the current errno as an error when it is -1.
pub fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A close-on-exec pipe as (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: writes two fds into `fds`.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, the other one.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Sets O_NONBLOCK on the open file description behind `fd`. Only the
/// agent's own ends get this: the child's ends of a pipe are separate
/// descriptions and stay blocking, as programs expect.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on a live fd; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL with an integer argument on the same fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// A `pollfd` asking for `events` on `fd`.
pub fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// `poll(2)`; `None` waits forever. An interrupted poll counts as a
/// timeout (callers loop and recompute their deadlines anyway).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        // Round up, so a sub-millisecond remainder does not spin.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: `fds` is a live, correctly sized array of pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    match cvt(n) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads into a live buffer of the given length.
    let n = cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `write(2)` from `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writes from a live buffer of the given length.
    let n = cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// Writes all of `data` to the non-blocking `fd`, waiting for room with
/// `poll`. Gives up (returning `Ok(false)`) as soon as `cancel` becomes
/// readable or hung up, so a reader that stopped reading cannot hold the
/// calling thread forever.
pub fn write_all_or_cancel(
    fd: BorrowedFd<'_>,
    mut data: &[u8],
    cancel: BorrowedFd<'_>,
) -> io::Result<bool> {
    while !data.is_empty() {
        match write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [pollfd(fd, libc::POLLOUT), pollfd(cancel, libc::POLLIN)];
                poll(&mut fds, None)?;
                if fds[1].revents != 0 {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Opens `/dev/null` read-write, close-on-exec.
pub fn dev_null() -> io::Result<OwnedFd> {
    // SAFETY: valid NUL-terminated path; the new fd is owned below.
    let fd = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An io error's description without std's " (os error N)" suffix, for
/// messages meant for people (`write /etc/x: Permission denied`).
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
