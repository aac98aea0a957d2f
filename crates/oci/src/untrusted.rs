//! Opening files an image supplies (an OCI layout's blobs, a docker
//! archive) without letting their names or types reach anything else.
//!
//! A layout directory is whatever its author made it: `blobs/sha256/<hex>`
//! may be a symlink to `/etc/shadow` (whose size and digest would end up in
//! an error message, or, with a matching digest, in the store with other
//! permissions), a symlink to `/dev/zero` declared as 8 GiB, or a FIFO that
//! blocks the pull forever. So files are opened beneath the layout's
//! directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` (a walk of `O_NOFOLLOW` opens where `openat2`
//! is missing), first as `O_PATH` so that nothing is opened for reading
//! before `fstat` says it is a regular file, then for reading with
//! `O_NONBLOCK`, checked again to be the same file. The caller compares
//! the size from `fstat` with what it expects before reading a byte.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, CWD};

/// Why a file could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// It does not exist.
    Missing,
    /// A component of its path is a symbolic link.
    Symlink,
    /// It exists but is not a regular file (`a directory`, `a fifo` ...).
    NotRegular(&'static str),
    /// Any other failure.
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("it does not exist"),
            Self::Symlink => {
                f.write_str("it is (or is below) a symbolic link, which is never followed")
            }
            Self::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl From<rustix::io::Errno> for OpenError {
    fn from(e: rustix::io::Errno) -> Self {
        match e {
            rustix::io::Errno::NOENT => Self::Missing,
            rustix::io::Errno::LOOP => Self::Symlink,
            rustix::io::Errno::NOTDIR => {
                Self::NotRegular("below something that is not a directory")
            }
            e => Self::Io(e.into()),
        }
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "a directory",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a regular file",
    }
}

/// Requires `fd` to be a regular file; returns its (device, inode, size).
fn regular(fd: BorrowedFd<'_>) -> Result<(u64, u64, u64), OpenError> {
    let st = rustix::fs::fstat(fd)?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t == FileType::Symlink {
        return Err(OpenError::Symlink);
    }
    if t != FileType::RegularFile {
        return Err(OpenError::NotRegular(kind_name(t)));
    }
    Ok((st.st_dev, st.st_ino, st.st_size as u64))
}

/// Opens for reading after an `O_PATH` probe (see the module docs).
fn open_checked(
    open: impl Fn(OFlags) -> Result<OwnedFd, OpenError>,
) -> Result<(File, u64), OpenError> {
    let probe = open(OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC)?;
    let (dev, ino, _) = regular(probe.as_fd())?;
    let fd = open(OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC)?;
    let (dev2, ino2, size) = regular(fd.as_fd())?;
    if (dev, ino) != (dev2, ino2) {
        return Err(OpenError::Io(io::Error::other(
            "the file was replaced while it was being opened",
        )));
    }
    Ok((File::from(fd), size))
}

/// A directory whose files are opened only beneath it.
#[derive(Debug)]
pub(crate) struct Beneath {
    dir: OwnedFd,
}

impl Beneath {
    /// Opens the directory `path` (named by the user, so a symlink to it is
    /// followed).
    pub fn open_dir(path: &Path) -> io::Result<Self> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { dir })
    }

    /// Opens the regular file `rel` (components separated by `/`, none of
    /// them `.`, `..` or empty) and returns it with its size.
    pub fn open(&self, rel: &str) -> Result<(File, u64), OpenError> {
        open_checked(|flags| self.open_raw(rel, flags))
    }

    fn open_raw(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, OpenError> {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.dir, rel, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => self.walk(rel, flags),
            other => Ok(other?),
        }
    }

    /// For kernels without `openat2` (before 5.6): one `O_NOFOLLOW` open
    /// per component.
    fn walk(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, OpenError> {
        let comps: Vec<&str> = rel.split('/').collect();
        if comps.iter().any(|c| matches!(*c, "" | "." | "..")) {
            return Err(OpenError::Io(io::Error::other(
                "internal: unsafe relative path",
            )));
        }
        let (last, parents) = comps.split_last().ok_or(OpenError::Missing)?;
        let mut dir: Option<OwnedFd> = None;
        for c in parents {
            let at = dir.as_ref().map_or(self.dir.as_fd(), |d| d.as_fd());
            let fd = rustix::fs::openat(
                at,
                *c,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            match FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) {
                FileType::Directory => dir = Some(fd),
                FileType::Symlink => return Err(OpenError::Symlink),
                _ => {
                    return Err(OpenError::NotRegular(
                        "below something that is not a directory",
                    ))
                }
            }
        }
        let at = dir.as_ref().map_or(self.dir.as_fd(), |d| d.as_fd());
        Ok(rustix::fs::openat(at, *last, flags, Mode::empty())?)
    }
}

/// Opens a file the user named (symlinks to it followed), requiring a
/// regular file, without blocking on a fifo or opening a device.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), OpenError> {
    open_checked(|flags| {
        // Follow a symlink the user named: drop NOFOLLOW for this path.
        let flags = flags & !OFlags::NOFOLLOW;
        Ok(rustix::fs::openat(CWD, path, flags, Mode::empty())?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_fifos_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/file"), b"abc").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("dirlink")).unwrap();
        rustix::fs::mknodat(
            CWD,
            d.join("sub/fifo"),
            FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .unwrap();
        let b = Beneath::open_dir(d).unwrap();
        let (_, size) = b.open("sub/file").unwrap();
        assert_eq!(size, 3);
        assert!(matches!(b.open("sub/link"), Err(OpenError::Symlink)));
        assert!(matches!(b.open("dirlink/file"), Err(OpenError::Symlink)));
        assert!(matches!(
            b.open("sub/fifo"),
            Err(OpenError::NotRegular("a fifo"))
        ));
        assert!(matches!(
            b.open("sub"),
            Err(OpenError::NotRegular("a directory"))
        ));
        assert!(matches!(b.open("sub/none"), Err(OpenError::Missing)));
        // The fallback walk behaves the same.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        assert!(matches!(
            b.walk("dirlink/file", flags),
            Err(OpenError::Symlink)
        ));
        assert!(b.walk("sub/file", flags).is_ok());
        assert!(matches!(
            open_regular(&d.join("sub/fifo")),
            Err(OpenError::NotRegular("a fifo"))
        ));
        assert!(open_regular(&d.join("dirlink/file")).is_ok());
    }
}
