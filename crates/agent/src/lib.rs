//! The supermachine guest agent.
//!
//! In a VM it is PID 1 (`/init` of the initramfs): it mounts the root
//! filesystem, reaps orphans, honours busybox-style power signals and serves
//! the host over vsock (see `supermachine-protocol`). With `--serve-unix` it
//! serves the same protocol on a Unix socket and touches nothing else, which
//! is how it is tested outside a VM.
//!
//! Rule for the whole crate: nothing here may panic or exit on bad input. A
//! dying PID 1 panics the guest kernel, and the agent profile aborts on panic.

#![warn(missing_docs)]

pub mod boot;
pub mod cmdline;
pub mod env;
pub mod exec;
pub mod files;
pub mod forward;
pub mod net;
pub mod power;
pub mod probe;
pub mod reaper;
pub mod restore;
pub mod server;
pub mod sys;
pub mod transport;
pub mod user;
pub mod write_file;

// The exec modules live under `exec/` now; their old paths stay valid.
pub use exec::{pty, quiet as exec_quiet, spawn, streams as exec_io};

/// Version reported to the host in `Ready` and `Version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes one `agent: ...` line to stderr, which is /dev/console when PID 1.
///
/// Goes through `write(2)` directly: `eprintln!` panics when stderr is
/// broken, and a failed log line must never take PID 1 down.
pub fn log(args: std::fmt::Arguments<'_>) {
    let line = format!("agent: {args}\n");
    let mut buf = line.as_bytes();
    while !buf.is_empty() {
        // SAFETY: writes from a live buffer of the given length.
        let n = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// `log!("...", args)`: see [`log()`].
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log(format_args!($($arg)*)) };
}
