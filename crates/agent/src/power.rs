//! Powering the VM off or rebooting it, the way an init does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// I/O port the supermachine VMM watches for the guest's intent. A write
/// here is the only way the host can tell a clean poweroff from a reboot
/// request or from a guest that died (kernel panic, triple fault): the
/// `reboot(2)` that follows looks the same for all of them from outside.
use supermachine_protocol::power_port::{self, PORT as PM_PORT};

/// How long processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// What [`run`] does once every process is stopped; each has its own value
/// on the power port, so the VMM learns which one it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the VM for good: the host's `Shutdown`, or `poweroff`/`halt`
    /// inside the guest.
    PowerOff,
    /// Restart the guest: `Shutdown { reboot: true }`, or `reboot` inside
    /// the guest.
    Reboot,
    /// Boot could not complete: power off, telling the VMM it was a failure.
    BootFailed,
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// Stops every process, flushes filesystems and powers off or reboots.
/// Never returns. Only meaningful as PID 1 (`kill(-1)` elsewhere would hit
/// every process of the user).
pub fn run(action: Action) -> ! {
    // A second request (signal plus host request, say) waits for the first.
    if STARTED.swap(true, Ordering::SeqCst) {
        park();
    }
    crate::log!(
        "{}",
        if action == Action::Reboot {
            "rebooting"
        } else {
            "powering off"
        }
    );

    // SAFETY: plain syscalls. kill(-1) from PID 1 reaches every process
    // except PID 1 itself and kernel threads.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    wait_for_children(TERM_GRACE);
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    wait_for_children(Duration::from_millis(200));

    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    unmount_all();
    // SAFETY: plain syscall.
    unsafe { libc::sync() };

    notify_vmm(match action {
        Action::PowerOff => power_port::POWER_OFF,
        Action::Reboot => power_port::REBOOT,
        Action::BootFailed => power_port::BOOT_FAILED,
    });
    let cmd = if action == Action::Reboot {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: plain syscall; on success it does not return.
    unsafe { libc::reboot(cmd) };
    crate::log!("reboot(2) failed: {}", std::io::Error::last_os_error());
    park()
}

/// Waits until no children are left (everything is our child by now: PID 1
/// inherits orphans), or `limit` passes. Races with the reaper thread over
/// who reaps; either way the count only goes down.
fn wait_for_children(limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // SAFETY: plain syscall; a null status pointer is allowed.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return;
        }
        if pid <= 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Unmounts what can be unmounted, innermost first, then makes the root
/// read-only, so writable volumes are clean when the VM stops. Failures
/// (busy /dev, the root itself) are expected and harmless after `sync`.
fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape)
        .collect();
    for target in targets.iter().rev().filter(|t| t.as_str() != "/") {
        if let Ok(c) = std::ffi::CString::new(target.as_str()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), 0) };
        }
    }
    // SAFETY: valid NUL-terminated strings / null where allowed.
    unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
}

/// Decodes the octal escapes (`\040` for a space) of /proc/self/mounts.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8); // the kernel only escapes bytes, so v < 256

                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `value` to [`PM_PORT`]. The direct `out` needs
/// CONFIG_X86_IOPL_IOPERM in the guest kernel; /dev/port (CONFIG_DEVPORT)
/// is the fallback. Without either, only the reboot(2) fallback remains and
/// the host cannot tell a poweroff from a crash.
#[cfg(target_arch = "x86_64")]
fn notify_vmm(value: u8) {
    // SAFETY: ioperm takes plain integers: it grants this process the one
    // port.
    if unsafe { libc::ioperm(PM_PORT as libc::c_ulong, 1, 1) } == 0 {
        // SAFETY: the port is ours (just granted); the `out` touches no
        // memory and only traps to the VMM.
        unsafe {
            core::arch::asm!(
                "out dx, al",
                in("dx") PM_PORT,
                in("al") value,
                options(nomem, nostack, preserves_flags)
            )
        };
        return;
    }
    let ioperm_err = std::io::Error::last_os_error();
    let via_dev_port = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/port")
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[value], PM_PORT.into()));
    if let Err(e) = via_dev_port {
        crate::log!(
            "cannot signal the VMM on port {PM_PORT:#x}: ioperm: {ioperm_err}; /dev/port: {e}"
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn notify_vmm(_value: u8) {}

fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(super::unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(super::unescape(r"/x\\y\01"), r"/x\\y\01");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert_eq!(super::unescape(r"\777"), "\u{fffd}"); // no overflow panic
    }
}
