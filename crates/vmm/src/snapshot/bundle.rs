//! A snapshot on disk: a directory with two files.
//!
//! - [`STATE_FILE`]: a [`SnapshotState`] in the checked envelope of
//!   [`super::format`] (vCPUs, VM, devices, memory layout).
//! - [`MEMORY_FILE`]: guest RAM, sparse (see [`super::memory`]).
//!
//! Which disks and kernel arguments the machine had is the host library's
//! business (it records them beside these files); the device states here
//! let a restore check that the disks it is given still fit.
//!
//! A snapshot directory may come from elsewhere: [`SnapshotDir`] opens its
//! files relative to the directory, never through a symlink, only if they
//! are regular files, and reads the state file only up to
//! [`MAX_STATE_BYTES`]. Files written here are new (never an existing name
//! or a symlink) and private (0600).

use super::format::{decode, encode, FormatError};
use super::memory::RegionLayout;
use super::MachineState;
use crate::devices::serial::SerialState;
use crate::devices::virtio::TransportState;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The largest state file a restore reads. A machine of 64 vCPUs saves a
/// few hundred KiB (CPUID, MSRs and XSAVE per vCPU); a state file far
/// larger is none this VMM wrote, and reading it whole would let a
/// snapshot from elsewhere choose how much the worker allocates.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Everything but guest memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Guest RAM in MiB, as the machine was made with; the restore checks
    /// that `memory` is the layout a boot of this size makes.
    pub memory_mib: u64,
    /// Where each RAM region sits in the guest and in [`MEMORY_FILE`].
    pub memory: Vec<RegionLayout>,
    /// The KVM state: the VM's interrupt controllers and timer, and each vCPU.
    pub machine: MachineState,
    /// The serial port's registers and unread input.
    pub serial: SerialState,
    /// The virtio transports, in MMIO slot order.
    pub devices: Vec<TransportState>,
}

/// A snapshot's state file could not be written, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Creating, opening, reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The state could not be encoded, or what was read failed the
    /// envelope's checks or did not decode.
    #[error("{}: {source}", path.display())]
    Format {
        /// The state file.
        path: PathBuf,
        /// What the envelope or the encoding found wrong.
        source: FormatError,
    },
    /// The state file is larger than [`MAX_STATE_BYTES`]; nothing of it
    /// was decoded.
    #[error("{}: {size} bytes, more than a state file can be ({MAX_STATE_BYTES})", path.display())]
    TooLarge {
        /// The state file.
        path: PathBuf,
        /// Its size in bytes (or the bytes read, if it grew meanwhile).
        size: u64,
    },
}

/// Writes the state file into `dir`, synced; returns its size.
pub fn write_state(dir: &Path, state: &SnapshotState) -> Result<u64, BundleError> {
    let path = dir.join(STATE_FILE);
    let bytes = encode(state).map_err(|source| BundleError::Format {
        path: path.clone(),
        source,
    })?;
    let io = |source| BundleError::Io {
        path: path.clone(),
        source,
    };
    let mut f = crate::files::create_new(&path).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(bytes.len() as u64)
}

/// Reads and checks the state file of the snapshot in `dir`.
pub fn read_state(dir: &Path) -> Result<SnapshotState, BundleError> {
    SnapshotDir::open(dir)?.read_state()
}

/// An open snapshot directory (see the module doc).
pub struct SnapshotDir {
    dir: OwnedFd,
    path: PathBuf,
}

impl SnapshotDir {
    /// Opens the directory at `path` (the path itself may be a symlink; what
    /// is in it is then opened only through this handle).
    pub fn open(path: &Path) -> Result<SnapshotDir, BundleError> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| BundleError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SnapshotDir {
            dir: dir.into(),
            path: path.to_path_buf(),
        })
    }

    /// The path the directory was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in the directory for reading: not through a symlink,
    /// and only if it is a regular file (a FIFO, device or directory put
    /// in its place is refused without being read).
    pub fn open_file(&self, name: &str) -> Result<File, BundleError> {
        let path = self.path.join(name);
        let io = |source| BundleError::Io {
            path: path.clone(),
            source,
        };
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: openat on our directory fd with a NUL-terminated name;
        // the fd it returns is owned below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: a new fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        crate::files::require_regular(&file).map_err(io)?;
        Ok(file)
    }

    /// Reads and checks the state file.
    pub fn read_state(&self) -> Result<SnapshotState, BundleError> {
        let path = self.path.join(STATE_FILE);
        let io = |source| BundleError::Io {
            path: path.clone(),
            source,
        };
        let file = self.open_file(STATE_FILE)?;
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_STATE_BYTES {
            return Err(BundleError::TooLarge { path, size });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // The cap holds even if the file grows after the size was read.
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(BundleError::TooLarge {
                path,
                size: bytes.len() as u64,
            });
        }
        decode(&bytes).map_err(|source| BundleError::Format { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::within_a_minute;

    fn refused(dir: &Path) -> String {
        match read_state(dir) {
            Ok(_) => panic!("a state was read"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_state_behind_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not a state").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(STATE_FILE)).unwrap();
        let why = refused(dir.path());
        assert!(why.contains("symbolic links"), "{why}");
    }

    #[test]
    fn a_fifo_named_state_is_refused_without_waiting_for_a_writer() {
        within_a_minute(|| {
            let dir = tempfile::tempdir().unwrap();
            let fifo = dir.path().join(STATE_FILE);
            let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let why = refused(dir.path());
            assert!(why.contains("not a regular file"), "{why}");
        });
    }

    #[test]
    fn a_state_file_larger_than_any_state_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join(STATE_FILE)).unwrap();
        // Sparse: costs no disk.
        file.set_len(MAX_STATE_BYTES * 4).unwrap();
        let err = read_state(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn files_written_are_private_and_new() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(STATE_FILE)).unwrap();
        let state = crate::test_support::snapshot_state(0, 64);
        assert!(write_state(dir.path(), &state).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        write_state(dir.path(), &state).unwrap();
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_state(dir.path()).unwrap().memory_mib, 64);
    }
}
