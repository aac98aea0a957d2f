//! PID 1 boot: API filesystems, console, root switch, hostname, loopback.

use crate::cmdline::BootConfig;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long the root block device may take to appear.
const ROOT_WAIT: Duration = Duration::from_secs(5);
/// Tried in order when the command line does not name the root's type.
const ROOT_FSTYPES: &[&str] = &["erofs", "ext4"];

const LOWER: &str = "/mnt/lower";
const RW: &str = "/mnt/rw";
const NEWROOT: &str = "/mnt/root";
/// Mounts carried from the initramfs into the real root, in this order.
const CARRIED: &[&str] = &["/proc", "/sys", "/dev", "/tmp", "/run"];

/// Mounts each shared host directory (virtio-fs) where the host asked,
/// creating the directory if needed; nosuid and nodev whatever the host
/// holds. The first failure is the error, naming the tag and the path.
pub fn mount_shares(mounts: &[crate::cmdline::GuestMount]) -> Result<(), String> {
    for m in mounts {
        std::fs::create_dir_all(&m.path)
            .map_err(|e| format!("mount {} on {}: creating the directory: {e}", m.tag, m.path))?;
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if m.read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(&m.tag, &m.path, "virtiofs", flags, "")
            .map_err(|e| format!("mount {} on {}: {e}", m.tag, m.path))?;
    }
    Ok(())
}

/// Mounts each volume (an ext4 disk the host formatted) where the host
/// asked, creating the directory if needed; nosuid and nodev. The disk is
/// found by its serial, waiting for it as for the root. The first failure
/// is the error, naming the serial and the path.
pub fn mount_volumes(volumes: &[crate::cmdline::GuestVolume]) -> Result<(), String> {
    for v in volumes {
        let what = || format!("volume {} on {}", v.serial, v.path);
        let dev = disk_with_serial(&v.serial).map_err(|e| format!("{}: {e}", what()))?;
        std::fs::create_dir_all(&v.path)
            .map_err(|e| format!("{}: creating the directory: {e}", what()))?;
        mount(&dev, &v.path, "ext4", libc::MS_NOSUID | libc::MS_NODEV, "")
            .map_err(|e| format!("{} ({dev}): {e}", what()))?;
    }
    Ok(())
}

/// `/dev/vdX` whose virtio-blk serial is `serial`, waiting up to
/// [`ROOT_WAIT`] for it to appear.
fn disk_with_serial(serial: &str) -> Result<String, String> {
    let deadline = Instant::now() + ROOT_WAIT;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str().filter(|n| n.starts_with("vd")) else {
                    continue;
                };
                let found = std::fs::read_to_string(entry.path().join("serial"))
                    .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
                if found {
                    return Ok(format!("/dev/{name}"));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no disk with serial {serial} within {ROOT_WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `mount(2)` with Rust strings; errors name the target.
fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, target_c, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    let opt = |s: &CString| {
        if s.as_bytes().is_empty() {
            std::ptr::null()
        } else {
            s.as_ptr()
        }
    };
    // SAFETY: every pointer is null or a valid NUL-terminated string.
    let ret = unsafe {
        libc::mount(
            opt(&src),
            target_c.as_ptr(),
            opt(&fstype),
            flags,
            opt(&data).cast(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mkdir(path: &str, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Mounts (or fails with a message naming) one filesystem on a fresh dir.
fn mount_at(fstype: &str, target: &str, flags: libc::c_ulong, data: &str) -> Result<(), String> {
    mkdir(target, 0o755).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(fstype, target, fstype, flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// Mounts /dev first (to get a console to complain on), then the rest of
/// the API filesystems inside the initramfs.
pub fn mount_early() -> Result<(), String> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount_at("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755")?;
    open_console();
    mount_at("proc", "/proc", nosuid_nodev | libc::MS_NOEXEC, "")?;
    mount_at("sysfs", "/sys", nosuid_nodev | libc::MS_NOEXEC, "")?;
    mount_at("tmpfs", "/tmp", nosuid_nodev, "mode=1777")?;
    mount_at("tmpfs", "/run", nosuid_nodev, "mode=0755")?;
    // Nice to have: a program needing a pty or POSIX shm fails on its own.
    let extras = [
        mount_at(
            "devpts",
            "/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        mount_at("tmpfs", "/dev/shm", nosuid_nodev, "mode=1777"),
    ];
    for e in extras.into_iter().filter_map(Result::err) {
        crate::log!("{e}");
    }
    // devtmpfs lacks the usual /dev symlinks; shells use /dev/fd.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Points fds 0-2 at the console when the kernel could not (no
/// /dev/console in the initramfs). Keeps them open on something in any
/// case: the exec code relies on new fds being >= 3.
pub fn open_console() {
    let rw = libc::O_RDWR | libc::O_NOCTTY;
    let _ = ensure_std_fds(c"/dev/console", rw)
        || ensure_std_fds(c"/dev/null", rw)
        || ensure_std_fds(c"/", libc::O_RDONLY);
}

/// Fills each closed fd of 0-2 with `path`; false if `path` cannot be opened.
pub fn ensure_std_fds(path: &CStr, flags: libc::c_int) -> bool {
    let closed: Vec<libc::c_int> = (0..3)
        // SAFETY: F_GETFD on a small integer fd; no memory is passed.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1)
        .collect();
    if closed.is_empty() {
        return true;
    }
    // SAFETY: `path` is a live NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return false;
    }
    for &target in &closed {
        if target != fd {
            // SAFETY: dup2 takes plain integers; `target` is closed, so no
            // fd of ours is replaced.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: `fd` was opened above and is owned by nothing else.
        unsafe { libc::close(fd) };
    }
    true
}

/// Mounts the root image read-only under a tmpfs-backed overlay and makes
/// it the root. Any error is fatal for the boot; the message names the
/// device and errno.
pub fn switch_root(cfg: &BootConfig) -> Result<(), String> {
    let Some(dev) = cfg.root.as_deref() else {
        return Ok(());
    };
    wait_for(dev)?;

    mkdir("/mnt", 0o755).map_err(|e| format!("mkdir /mnt: {e}"))?;
    mkdir(LOWER, 0o755).map_err(|e| format!("mkdir {LOWER}: {e}"))?;
    let types: Vec<&str> = match cfg.rootfstype.as_deref() {
        Some(t) => vec![t],
        None => ROOT_FSTYPES.to_vec(),
    };
    let mut errors = Vec::new();
    for fstype in &types {
        match mount(dev, LOWER, fstype, libc::MS_RDONLY, "") {
            Ok(()) => {
                errors.clear();
                break;
            }
            Err(e) => errors.push(format!("{fstype}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "cannot mount root {dev} read-only ({})",
            errors.join("; ")
        ));
    }

    // Writes land in guest RAM, so snapshots capture them and the image
    // stays pristine for every other VM sharing it.
    mount_at("tmpfs", RW, 0, "mode=0755")?;
    for dir in ["/mnt/rw/upper", "/mnt/rw/work"] {
        mkdir(dir, 0o755).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    mkdir(NEWROOT, 0o755).map_err(|e| format!("mkdir {NEWROOT}: {e}"))?;
    let opts = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount("overlay", NEWROOT, "overlay", 0, &opts)
        .map_err(|e| format!("mount overlay on {NEWROOT} ({opts}): {e}"))?;

    for dir in CARRIED {
        let target = format!("{NEWROOT}{dir}");
        let mode = if *dir == "/tmp" { 0o1777 } else { 0o755 };
        mkdir(&target, mode).map_err(|e| format!("mkdir {target}: {e}"))?;
        mount(dir, &target, "", libc::MS_MOVE, "")
            .map_err(|e| format!("move {dir} to {target}: {e}"))?;
    }

    // The initramfs is rootfs, which cannot be pivot_root'ed away: move the
    // new root over it and chroot into it (what switch_root(8) does).
    std::env::set_current_dir(NEWROOT).map_err(|e| format!("chdir {NEWROOT}: {e}"))?;
    mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| format!("move {NEWROOT} to /: {e}"))?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot {NEWROOT}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir / after chroot: {e}"))?;
    Ok(())
}

/// Polls for the device node: devtmpfs creates it when the driver probes,
/// which may still be under way when init starts.
fn wait_for(dev: &str) -> Result<(), String> {
    let deadline = Instant::now() + ROOT_WAIT;
    loop {
        match std::fs::metadata(dev) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "root device {dev} did not appear within {ROOT_WAIT:?}: {e}"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Sets the guest's hostname (the UTS name every process sees). The kernel
/// refuses names longer than 64 bytes with `EINVAL`.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: passes a live buffer with its length (no NUL needed).
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings `lo` up, so guest programs can talk to themselves over 127.0.0.1.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes plain integers.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns; closed when dropped.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills in the live ifreq it is given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the live ifreq it is given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
