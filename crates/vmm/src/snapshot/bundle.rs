//! A snapshot on disk: a directory with two files.
//!
//! - [`STATE_FILE`]: a [`SnapshotState`] in the checked envelope of
//!   [`super::format`] (vCPUs, VM, devices, memory layout).
//! - [`MEMORY_FILE`]: guest RAM, sparse (see [`super::memory`]).
//!
//! Which disks and kernel arguments the machine had is the host library's
//! business (it records them beside these files); the device states here
//! let a restore check that the disks it is given still fit.

use super::format::{decode, encode, FormatError};
use super::memory::RegionLayout;
use super::MachineState;
use crate::devices::serial::SerialState;
use crate::devices::virtio::TransportState;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// Everything but guest memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub memory_mib: u64,
    pub memory: Vec<RegionLayout>,
    pub machine: MachineState,
    pub serial: SerialState,
    /// The virtio transports, in MMIO slot order.
    pub devices: Vec<TransportState>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Format { path: PathBuf, source: FormatError },
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
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    decode(&bytes).map_err(|source| BundleError::Format { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

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
