//! Advisory file locks (`flock(2)`), used to make the store safe across
//! processes: one per blob digest (a blob is fetched once even when two
//! pulls want it) and one for the whole store (pulls share it, `gc` takes it
//! exclusively).
//!
//! `flock` rather than `fcntl` locks: flock locks belong to the open file
//! description, so two threads of one process that open the lock file
//! separately exclude each other too, and the lock dies with the process,
//! so a killed pull never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// A held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

/// Shared (many holders) or exclusive (one holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder, no shared holders.
    Exclusive,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is held.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock> {
        let file = open(path)?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).ctx(|| format!("locking {}", path.display()));
            }
        }
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock only if nobody holds a conflicting one.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let file = open(path)?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        // SAFETY: as above.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
            }));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err).ctx(|| format!("locking {}", path.display()))
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .is_none());
        drop(a);
        let s1 = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        let s2 = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        assert!(s1.is_some() && s2.is_some());
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
    }
}
