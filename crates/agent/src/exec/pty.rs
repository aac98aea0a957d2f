//! Pseudo-terminals for `ExecRequest::pty`.
//!
//! Done with the raw ioctls rather than glibc's `openpty`/`grantpt`: the
//! agent is static, and with devpts (always mounted at /dev/pts in the
//! guest) `grantpt` has nothing to do anyway.

use crate::sys::cvt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use supermachine_protocol::WindowSize;

/// Both ends of a new terminal, close-on-exec.
pub struct Pty {
    /// The agent's end: reads what the child writes, takes its input.
    pub master: OwnedFd,
    /// Opened without becoming anyone's controlling terminal; the child
    /// makes it its own with TIOCSCTTY.
    pub slave: OwnedFd,
}

const FLAGS: libc::c_int = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;

/// Opens a new terminal of `size`.
pub fn open(size: WindowSize) -> io::Result<Pty> {
    let master = open_master()?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a live local.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let slave = open_slave(&master)?;
    set_size(master.as_fd(), size)?;
    Ok(Pty { master, slave })
}

fn open_master() -> io::Result<OwnedFd> {
    // /dev/ptmx is the usual node; /dev/pts/ptmx serves when devtmpfs
    // lacks it.
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for path in [c"/dev/ptmx", c"/dev/pts/ptmx"] {
        // SAFETY: valid NUL-terminated path; the fd is owned below.
        match cvt(unsafe { libc::open(path.as_ptr(), FLAGS) }) {
            // SAFETY: open returned a new fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// TIOCGPTPEER opens the slave straight from the master, with no path
/// lookup that another mount could redirect; kernels before 4.13 lack it,
/// so fall back to /dev/pts/N.
fn open_slave(master: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, FLAGS) };
    if fd >= 0 {
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int into a live local.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    let path = std::ffi::CString::new(format!("/dev/pts/{n}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated path; the fd is owned below.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), FLAGS) })?;
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the terminal's size; the kernel sends SIGWINCH to its foreground
/// process group when it changes.
pub fn set_size(master: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a live local.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// The terminal's foreground process group, which is where a terminal
/// sends the signals its keys generate, and so where the host's signals go.
pub fn foreground_group(master: BorrowedFd<'_>) -> Option<libc::pid_t> {
    let mut pgrp: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP writes a pid_t into a live local.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPGRP, &mut pgrp) };
    (ret == 0 && pgrp > 0).then_some(pgrp)
}

/// The terminal's end-of-file character (VEOF, normally ^D).
pub fn eof_char(master: BorrowedFd<'_>) -> u8 {
    // SAFETY: termios is plain old data; tcgetattr fills it in.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into a live local.
    match unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } {
        0 if t.c_cc[libc::VEOF] != 0 => t.c_cc[libc::VEOF],
        _ => 4,
    }
}
