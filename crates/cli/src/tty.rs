//! The host terminal for `-t`: raw mode while a guest program owns it, and
//! its size.

use std::os::fd::RawFd;

const STDIN: RawFd = libc::STDIN_FILENO;

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on stdout (or stdin), if there is one.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, STDIN] {
        // SAFETY: winsize is plain data; all-zero is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into the live `ws`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Puts stdin's terminal in raw mode (keys, Ctrl-C included, go to the
/// guest as bytes) and restores it when dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal: nothing to change.
    pub fn enable() -> Option<RawMode> {
        if !is_tty(STDIN) {
            return None;
        }
        // SAFETY: termios is plain data; all-zero is a valid value.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills in the live `saved`.
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the live copy `raw`.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the live `raw`.
        if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable`.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &self.saved) };
    }
}
