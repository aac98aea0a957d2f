//! `Restored`: makes a VM restored from a snapshot its own machine.
//!
//! Every copy of a snapshot wakes up with the snapshot's wall clock, the
//! snapshot's kernel CRNG state (so two copies would hand out the same
//! /dev/urandom bytes) and the snapshot's identity. The host sends the
//! fixes right after the restore; this applies them, in order of
//! importance: clock, randomness, hostname, machine id.
//!
//! The whole request is validated before anything is changed, so a bad
//! request never leaves the guest half fixed.

use crate::sys;
use crate::transport::Stream;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use supermachine_protocol::{write_frame, AgentMessage, ErrorKind, RestoreFixup};

/// Fewest seed bytes accepted: 256 bits, what the kernel's CRNG needs to
/// count as fully seeded.
pub const MIN_SEED: usize = 32;
/// `HOST_NAME_MAX` on Linux; `sethostname` refuses longer names.
pub const MAX_HOSTNAME: usize = 64;

/// Linux's generic `_IOC(dir, type, nr, size)`: `dir << 30 | size << 16 |
/// type << 8 | nr`. This layout is x86_64's (and arm64's); powerpc, mips
/// and sparc differ, but the agent only runs on x86_64 guests.
const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}
/// `_IOC_WRITE`: the argument is read by the kernel.
const IOC_WRITE: u32 = 1;

/// `RNDADDENTROPY = _IOW('R', 0x03, int[2])` from <linux/random.h>:
/// `ioc(1, 'R', 3, 8)` = 0x4000_0000 | 0x0008_0000 | 0x5200 | 0x03
/// = 0x4008_5203. The size is the two-int header of `rand_pool_info`.
const RNDADDENTROPY: u32 = ioc(IOC_WRITE, b'R', 0x03, 2 * 4);
/// `RNDRESEEDCRNG = _IO('R', 0x07)`: `ioc(0, 'R', 7, 0)` = 0x5207.
const RNDRESEEDCRNG: u32 = ioc(0, b'R', 0x07, 0);

/// A refused seed: too short to make copies diverge.
pub fn check_seed(seed: &[u8]) -> Result<(), String> {
    if seed.len() < MIN_SEED {
        return Err(format!(
            "seed of {} bytes: at least {MIN_SEED} are needed",
            seed.len()
        ));
    }
    Ok(())
}

/// A refused hostname (an empty one means "unchanged" and passes).
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.len() > MAX_HOSTNAME {
        return Err(format!(
            "hostname of {} bytes: at most {MAX_HOSTNAME}",
            name.len()
        ));
    }
    // The kernel takes any bytes, but a NUL truncates the name for every
    // C reader and a '/' breaks tools that build paths from it.
    if name.contains(['\0', '/']) {
        return Err(format!("hostname {name:?} contains a NUL byte or '/'"));
    }
    Ok(())
}

/// A refused machine id (an empty one means "unchanged" and passes):
/// machine-id(5) is exactly 32 lowercase hex digits.
pub fn check_machine_id(id: &str) -> Result<(), String> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if id.is_empty() || (id.len() == 32 && id.bytes().all(hex)) {
        return Ok(());
    }
    Err(format!(
        "machine id {id:?}: expected 32 lowercase hex digits"
    ))
}

/// Every check of the request, before anything is applied.
pub fn validate(f: &RestoreFixup) -> Result<(), String> {
    check_seed(&f.seed)?;
    check_hostname(&f.hostname)?;
    check_machine_id(&f.machine_id)
}

/// Held while a fixup is being applied. The answer goes out before the
/// machine id is written (a file in the overlay, the slowest step), so the
/// host's next request is on its way meanwhile; every request that could
/// see the guest's identity waits here first ([`wait_for_fixup`]), so none
/// observes a half-fixed copy.
static FIXING: Mutex<()> = Mutex::new(());

/// Waits until no fixup is being applied.
pub fn wait_for_fixup() {
    drop(FIXING.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Serves one `Restored` request. With `apply` false (the agent serving a
/// Unix socket in tests, which runs on a developer's or CI's own machine)
/// the request is validated and answered but nothing is changed.
pub fn handle(stream: &Stream, fixup: &RestoreFixup, apply: bool) {
    let _fixing = FIXING.lock().unwrap_or_else(|e| e.into_inner());
    let reply = match validate(fixup) {
        Err(message) => AgentMessage::Error {
            kind: ErrorKind::BadRequest,
            message,
        },
        Ok(()) if !apply => AgentMessage::Done { count: 0 },
        Ok(()) => match apply_fixup(fixup) {
            Ok(()) => AgentMessage::Done { count: 0 },
            Err(message) => AgentMessage::Error {
                kind: ErrorKind::Failed,
                message,
            },
        },
    };
    let answered_done = matches!(reply, AgentMessage::Done { .. });
    let _ = write_frame(&mut &*stream, &reply);
    if apply && answered_done && !fixup.machine_id.is_empty() {
        // A courtesy to the workload: an image with a read-only /etc still
        // gets its clock and randomness, which are what matter.
        if let Err(e) = write_machine_id(Path::new("/etc"), &fixup.machine_id) {
            crate::log!(
                "restore: /etc/machine-id not written: {}",
                sys::describe(&e)
            );
        }
    }
}

/// Applies a validated fixup but the machine id (see [`FIXING`]); the
/// error names the step that failed.
fn apply_fixup(f: &RestoreFixup) -> Result<(), String> {
    set_clock(f.unix_time_ns).map_err(failed("setting the clock"))?;
    // reseed() names its own steps: opening, adding, reseeding.
    reseed(&f.seed)?;
    if !f.hostname.is_empty() {
        set_hostname(&f.hostname).map_err(failed("setting the hostname"))?;
    }
    Ok(())
}

/// Turns an OS error into `step: description`, as sent to the host.
fn failed(step: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{step}: {}", sys::describe(&e))
}

fn set_clock(unix_time_ns: u64) -> io::Result<()> {
    // u64 nanoseconds reach year 2554: the seconds always fit an i64.
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: passes a valid timespec by pointer.
    sys::cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })?;
    Ok(())
}

/// Mixes `seed` into the input pool, credited at 8 bits a byte, then makes
/// the CRNG reseed from it at once. A plain write to /dev/urandom would be
/// neither credited nor used before the next scheduled reseed (up to a
/// minute away on 6.1), during which both copies keep the same stream.
fn reseed(seed: &[u8]) -> Result<(), String> {
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(failed("opening /dev/urandom"))?;
    let fd = urandom.as_raw_fd();

    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    // with buf_size in bytes. Frames cap the seed at 1 MiB, so both ints fit.
    let too_long = || format!("seed of {} bytes is too long", seed.len());
    let len = i32::try_from(seed.len()).map_err(|_| too_long())?;
    let bits = len.checked_mul(8).ok_or_else(too_long)?;
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: `info` is a complete rand_pool_info holding the `buf_size`
    // bytes it declares; the kernel only reads it.
    sys::cvt(unsafe { libc::ioctl(fd, RNDADDENTROPY as _, info.as_ptr()) })
        .map_err(failed("adding the seed to the entropy pool"))?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    sys::cvt(unsafe { libc::ioctl(fd, RNDRESEEDCRNG as _) })
        .map_err(failed("reseeding the kernel CRNG"))?;
    Ok(())
}

fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: passes a live buffer and its length (no NUL needed).
    sys::cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Replaces `etc`/machine-id atomically (a temporary file in `etc` renamed
/// over it), so a reader never sees it empty. No fsync: the root is an
/// overlay on tmpfs. An image without /etc has no use for one.
fn write_machine_id(etc: &Path, id: &str) -> io::Result<()> {
    if !etc.is_dir() {
        return Ok(());
    }
    let temp = etc.join(format!(".machine-id.sm-{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(&temp)?;
        // Exactly 0444 whatever the umask (and for a leftover temp file).
        file.set_permissions(fs::Permissions::from_mode(0o444))?;
        file.write_all(format!("{id}\n").as_bytes())?;
        drop(file);
        fs::rename(&temp, etc.join("machine-id"))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixup() -> RestoreFixup {
        RestoreFixup {
            unix_time_ns: 1,
            seed: vec![7; MIN_SEED],
            hostname: "copy-1".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn ioctl_numbers_match_linux_x86_64() {
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn seed_needs_32_bytes() {
        assert!(check_seed(&[0; 32]).is_ok());
        assert!(check_seed(&[0; 4096]).is_ok());
        let err = check_seed(&[0; 31]).unwrap_err();
        assert!(err.contains("31 bytes"), "{err}");
        assert!(check_seed(&[]).is_err());
    }

    #[test]
    fn hostname_rules() {
        for good in ["", "a", "copy-1.example", &"x".repeat(64)] {
            assert!(check_hostname(good).is_ok(), "{good:?}");
        }
        for bad in ["a/b", "/", "a\0b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
        // 64 bytes, not 64 characters.
        assert!(check_hostname(&"é".repeat(33)).is_err());
    }

    #[test]
    fn machine_id_rules() {
        assert!(check_machine_id("").is_ok());
        assert!(check_machine_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "0123",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcde\n",
            "0123456789abcdef-123456789abcdef",
            &"g".repeat(32),
            // 32 bytes, but not 32 hex digits.
            "0123456789abcdef0123456789abcdé",
        ] {
            assert!(check_machine_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn machine_id_is_replaced_read_only_and_without_leftovers() {
        let dir = std::env::temp_dir().join(format!("sm-restore-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("machine-id"), "old\n").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        write_machine_id(&dir, id).unwrap();
        let file = dir.join("machine-id");
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{id}\n"));
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o444);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["machine-id"]);
        // A second restore of the same copy replaces the read-only file.
        write_machine_id(&dir, &id.replace('0', "f")).unwrap();
        assert!(fs::read_to_string(&file).unwrap().starts_with("f123"));
        fs::remove_dir_all(&dir).unwrap();
        // No such directory: nothing to do, and no error.
        assert!(write_machine_id(&dir, id).is_ok());
    }

    #[test]
    fn validate_checks_every_field() {
        assert!(validate(&fixup()).is_ok());
        let unchanged = RestoreFixup {
            hostname: String::new(),
            machine_id: String::new(),
            ..fixup()
        };
        assert!(validate(&unchanged).is_ok());
        for bad in [
            RestoreFixup {
                seed: vec![1; 31],
                ..fixup()
            },
            RestoreFixup {
                hostname: "a/b".into(),
                ..fixup()
            },
            RestoreFixup {
                machine_id: "xyz".into(),
                ..fixup()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }
}
