//! Files and directories the worker makes or reads on the host.
//!
//! Made with explicit modes, never whatever the umask leaves: files 0600,
//! directories 0700, so other users see nothing of a VM (its console, its
//! memory, its sockets). Opened without following a symlink in the last
//! component, so a name someone else planted cannot send a write, or a
//! read, to a file of their choosing; and where a regular file is
//! expected, anything else (a FIFO that would block, a device that never
//! ends) is refused before it is read.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file the worker creates.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of every directory the worker makes its own.
pub const PRIVATE_DIR: u32 = 0o700;

/// Creates `path`, which must not exist (not even as a symlink), for
/// reading and writing, mode 0600.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a log file for writing (and reading: a capped log moves its
/// tail), creating it (mode 0600) if need be; an existing one keeps its
/// contents. Refuses a symlink or anything but a regular file.
pub fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(PRIVATE_FILE)
        // O_NONBLOCK: a FIFO put there opens at once and is refused below.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    require_regular(&file)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Opens `path` for reading if it is a regular file (not a symlink, FIFO,
/// device or directory).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    require_regular(&file)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// An error unless `file` is a regular file.
pub fn require_regular(file: &File) -> io::Result<()> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({kind:?})"),
        ))
    }
}

/// Regular files ignore O_NONBLOCK, but the flag would be inherited by
/// anything given the fd; take it off once the type is known.
pub fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: F_SETFL with an integer argument on the same fd.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the existing directory `path` private (0700). It must be a real
/// directory (not a symlink to one) owned by this process's user.
pub fn make_private_dir(path: &Path) -> io::Result<()> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = dir.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: owned by uid {}, not by us ({me})",
                path.display(),
                meta.uid()
            ),
        ));
    }
    dir.set_permissions(std::fs::Permissions::from_mode(PRIVATE_DIR))
}

/// Creates a new file in `dir` under a name nobody can guess
/// (`.<prefix>.<random>`), mode 0600; returns it and its path. For a file
/// written in full and then renamed into place.
pub fn create_temp_in(dir: &Path, prefix: &str) -> io::Result<(File, PathBuf)> {
    loop {
        let mut random = [0u8; 8];
        // SAFETY: getrandom writes at most `random.len()` bytes into it.
        let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if n != random.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let path = dir.join(format!(".{prefix}.{:016x}", u64::from_ne_bytes(random)));
        match create_new(&path) {
            Ok(file) => return Ok((file, path)),
            // Taken (by chance, or planted): draw again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn new_files_are_private_and_never_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        create_new(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(create_new(&planted).is_err());
        assert!(open_log(&planted).is_err());
        assert!(open_regular(&planted).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn logs_are_created_private_and_keep_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        drop(open_log(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::write(&path, "earlier").unwrap();
        drop(open_log(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier");
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Neither blocks on the FIFO nor takes it.
        assert!(open_regular(&fifo).is_err());
        assert!(open_log(&fifo).is_err());
        assert!(open_regular(Path::new("/dev/zero")).is_err());
        assert!(open_regular(dir.path()).is_err());
    }

    #[test]
    fn a_directory_is_made_private_only_if_it_is_ours_and_real() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private_dir(&vm).unwrap();
        assert_eq!(mode(&vm), 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&vm, &link).unwrap();
        assert!(make_private_dir(&link).is_err());
    }

    #[test]
    fn temp_names_are_fresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, pa) = create_temp_in(dir.path(), "hot-pages").unwrap();
        let (_b, pb) = create_temp_in(dir.path(), "hot-pages").unwrap();
        assert_ne!(pa, pb);
        assert_eq!(mode(&pa), 0o600);
        assert!(pa
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".hot-pages."));
    }
}
