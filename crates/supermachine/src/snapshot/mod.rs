//! Snapshots on the host side.
//!
//! A snapshot is a directory:
//!
//! ```text
//! state        vCPUs, VM and device state (written by the worker)
//! memory       guest RAM, sparse (written by the worker)
//! disk0.img    the root filesystem the VM ran from (hard link or copy)
//! disk1.img …  its other disks, all read-only
//! meta.json    what the library needs to restore it (SnapshotMeta)
//! ```
//!
//! The disks live inside the snapshot so it never depends on a cache that
//! `supermachine gc` may clean; a hard link costs nothing. A snapshot is
//! assembled in a hidden sibling directory and renamed into place, so a
//! crash mid-snapshot never leaves a half snapshot under the real name.
//!
//! ```no_run
//! # fn demo() -> Result<(), supermachine::Error> {
//! let root = supermachine::default_snapshots_dir()?;
//! for (dir, meta) in supermachine::snapshot::list(&root) {
//!     println!("{} {} {} MiB", dir.display(), meta.image, meta.memory_mib);
//! }
//! # Ok(()) }
//! ```

pub(crate) mod build;
pub(crate) mod pool;
mod restore;

use crate::error::Error;
use crate::image::defaults::ExecDefaults;
use crate::paths;
use crate::worker::control::{self, ControlError};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use supermachine_protocol::worker_control::{
    SnapshotReport, WorkerReply, WorkerRequest, HOT_PAGES_FILE,
};

/// Name of the metadata file in a snapshot directory.
///
/// ```
/// let meta = std::path::Path::new("/srv/snapshots/app").join(supermachine::snapshot::META_FILE);
/// assert_eq!(meta, std::path::Path::new("/srv/snapshots/app/meta.json"));
/// ```
pub const META_FILE: &str = "meta.json";
/// Bumped when [`SnapshotMeta`] or the directory layout changes.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::snapshot::{read_meta, META_FORMAT};
/// let meta = read_meta(std::path::Path::new("/srv/snapshots/app"))?;
/// assert_eq!(meta.format, META_FORMAT); // read_meta refuses other formats
/// # Ok(()) }
/// ```
pub const META_FORMAT: u32 = 1;
/// How long the worker may take to write a snapshot (memory sync included).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// One disk of a snapshotted VM, as a file inside the snapshot.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let dir = std::path::Path::new("/srv/snapshots/app");
/// for disk in supermachine::snapshot::read_meta(dir)?.disks {
///     println!("{} (read-only: {})", dir.join(&disk.file).display(), disk.read_only);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// The disk's file name inside the snapshot directory.
    pub file: String,
    /// Whether the VM saw it read-only (a snapshot's disks must be).
    pub read_only: bool,
}

/// `meta.json`: what a snapshot was made from and how to restore it.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let meta = supermachine::snapshot::read_meta(std::path::Path::new("/srv/snapshots/app"))?;
/// println!("{} with {} MiB, {} vCPUs", meta.image, meta.memory_mib, meta.vcpus);
/// println!("{} of {} memory bytes stored", meta.memory_data_bytes, meta.memory_bytes);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The version of this metadata's layout; another is refused.
    pub format: u32,
    /// Seconds since the epoch.
    pub created: u64,
    /// The image the VM was started from (reference or path).
    pub image: String,
    /// The image's manifest digest, when known.
    pub image_digest: Option<String>,
    /// The ports the image exposes (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// Env, working directory and user of every exec in a restored VM.
    pub defaults: ExecDefaults,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Root filesystem first.
    pub disks: Vec<SnapshotDisk>,
    /// The build key, for snapshots made by [`crate::Image::build`].
    pub key: Option<String>,
    /// The workload command started before the snapshot, if any.
    pub command: Vec<String>,
    /// Size of the memory file (guest RAM).
    pub memory_bytes: u64,
    /// Bytes of memory actually stored (the rest are holes).
    pub memory_data_bytes: u64,
    /// The shared directories the VM had, by tag: a restore must be given
    /// a host directory for each (never taken from here: a snapshot from
    /// elsewhere must not choose what the host shares).
    #[serde(default)]
    pub mounts: Vec<SnapshotMount>,
    /// Whether the VM had a network card. Its egress policy is not kept:
    /// a restore gets the caller's, or the public-only default.
    #[serde(default)]
    pub network: bool,
}

/// A shared directory as a snapshot records it: no host path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMount {
    /// The tag the guest mounted.
    pub tag: String,
    /// Its symlink policy.
    pub symlinks: crate::SymlinkPolicy,
    /// Whether it was read-only.
    pub read_only: bool,
}

/// Largest `meta.json` read: a real one is a few KiB.
pub const MAX_META_BYTES: u64 = 1 << 20;
/// Most vCPUs a snapshot may have (the worker restores at most this many).
pub const MAX_VCPUS: u8 = 64;

/// Why a snapshot directory was refused, or a snapshot could not be
/// taken or restored.
///
/// ```
/// use supermachine::snapshot::SnapshotProblem;
/// let p = SnapshotProblem::WritableDisk { file: "disk0.img".into() };
/// assert!(p.to_string().contains("disk0.img"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotProblem {
    /// The directory does not exist.
    #[error("no such snapshot")]
    NotFound,
    /// The directory has no `meta.json`.
    #[error("not a snapshot (no meta.json)")]
    NoMeta,
    #[error(
        "made by another version (format {found}, this one reads {META_FORMAT}): build it again"
    )]
    /// Made by a version with another metadata layout.
    OtherFormat {
        /// Its format.
        found: u32,
    },
    /// `meta.json` does not parse.
    #[error("meta.json: {0}")]
    BadMeta(String),
    #[error(
        "meta.json is {size} bytes, more than the {cap} a snapshot's metadata can take: refused"
    )]
    /// `meta.json` is larger than any real one.
    MetaTooLarge {
        /// Its size in bytes.
        size: u64,
        /// [`MAX_META_BYTES`].
        cap: u64,
    },
    /// A file the snapshot needs is not there.
    #[error("{file} is missing: the snapshot is incomplete")]
    Missing {
        /// Its name.
        file: String,
    },
    /// A file of the snapshot is a symlink, directory or device.
    #[error("{file} is not a regular file (a symlink, directory or device): refused")]
    NotRegular {
        /// Its name.
        file: String,
    },
    /// A disk's file name would lead outside the snapshot directory.
    #[error("disk file name {name:?} is not a plain file name inside the snapshot: refused")]
    BadDiskName {
        /// The name as listed.
        name: String,
    },
    /// A disk file is listed twice.
    #[error("disk file {name} is listed more than once: refused")]
    DuplicateDisk {
        /// Its name.
        name: String,
    },
    #[error(
        "disk {file} is not read-only: restored copies would write into the snapshot. Refused"
    )]
    /// A disk is listed writable: restored copies would write into it.
    WritableDisk {
        /// Its file name.
        file: String,
    },
    /// The snapshot lists no disk (it needs its root filesystem).
    #[error("the snapshot lists no disks")]
    NoDisks,
    /// A vCPU count no restore makes.
    #[error("{vcpus} vCPUs: a snapshot has 1 to {max}")]
    Vcpus {
        /// The count listed.
        vcpus: u8,
        /// [`MAX_VCPUS`].
        max: u8,
    },
    /// More guest memory than this host has.
    #[error("{mib} MiB of guest memory: more than this host has ({cap} MiB)")]
    Memory {
        /// The memory listed, in MiB.
        mib: u64,
        /// This host's memory, in MiB.
        cap: u64,
    },
    /// The memory file's size is not the one `meta.json` lists.
    #[error("the memory file is {found} bytes, meta.json says {expected} (truncated?): refused")]
    MemorySize {
        /// The size listed.
        expected: u64,
        /// The file's size.
        found: u64,
    },
    /// The path to snapshot into exists already.
    #[error("already exists: choose a new path or remove it")]
    Exists,
    /// The path to snapshot into has no usable directory name.
    #[error("not a directory name")]
    BadName,
    /// The VM was started by a version that did not record its disks.
    #[error("this VM's disks are unknown (started by an older supermachine): restart it")]
    UnknownDisks,
    /// The VM has a writable disk, which would change under the snapshot.
    #[error("{} is a writable disk or a volume: it would keep changing under the snapshot and every restored copy would write to it. Snapshot VMs with read-only disks and no volumes (volumes in snapshots are not supported yet)", .path.display())]
    VmDiskWritable {
        /// The disk.
        path: PathBuf,
    },
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker refused or failed ([`ControlError::failure_kind`] says
    /// which kind of failure it was).
    #[error(transparent)]
    Worker(#[from] ControlError),
}

fn err(path: &Path, reason: SnapshotProblem) -> Error {
    Error::Snapshot {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_problem(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotProblem {
    let what = what.into();
    move |source| SnapshotProblem::Io { what, source }
}

/// Opens `name` inside the snapshot directory `dir`: never through a
/// symlink, and only a regular file. Returns it with its size.
fn open_member(dir: &OwnedFd, name: &str) -> Result<(std::fs::File, u64), SnapshotProblem> {
    let opened = rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            return Err(SnapshotProblem::Missing { file: name.into() })
        }
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            return Err(SnapshotProblem::NotRegular { file: name.into() })
        }
        Err(e) => return Err(io_problem(format!("opening {name}"))(e.into())),
    };
    let stat =
        rustix::fs::fstat(&fd).map_err(|e| io_problem(format!("reading {name}"))(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(SnapshotProblem::NotRegular { file: name.into() });
    }
    Ok((std::fs::File::from(fd), stat.st_size as u64))
}

/// This host's memory in MiB: no snapshot may ask for more.
fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page as u64) >> 20
}

/// Refuses metadata the worker would refuse, or that would make a
/// restored VM write into the snapshot.
fn check_meta(meta: &SnapshotMeta) -> Result<(), SnapshotProblem> {
    if meta.vcpus == 0 || meta.vcpus > MAX_VCPUS {
        return Err(SnapshotProblem::Vcpus {
            vcpus: meta.vcpus,
            max: MAX_VCPUS,
        });
    }
    let cap = host_memory_mib();
    if meta.memory_mib == 0 || meta.memory_mib > cap {
        return Err(SnapshotProblem::Memory {
            mib: meta.memory_mib,
            cap,
        });
    }
    if meta.disks.is_empty() {
        return Err(SnapshotProblem::NoDisks);
    }
    let mut tags = std::collections::HashSet::new();
    for mount in &meta.mounts {
        if supermachine_protocol::fs_spec::check_tag(&mount.tag).is_err()
            || !tags.insert(&mount.tag)
        {
            return Err(SnapshotProblem::BadMeta(format!(
                "mount tag {:?} is not valid or repeats",
                mount.tag
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for disk in &meta.disks {
        let plain = !disk.file.is_empty()
            && !disk.file.starts_with('.')
            && disk.file.len() <= 255
            && !disk.file.contains(['/', '\0']);
        let reserved = [META_FILE, "state", "memory", HOT_PAGES_FILE].contains(&disk.file.as_str());
        if !plain || reserved {
            return Err(SnapshotProblem::BadDiskName {
                name: disk.file.clone(),
            });
        }
        if !seen.insert(disk.file.as_str()) {
            return Err(SnapshotProblem::DuplicateDisk {
                name: disk.file.clone(),
            });
        }
        if !disk.read_only {
            return Err(SnapshotProblem::WritableDisk {
                file: disk.file.clone(),
            });
        }
    }
    Ok(())
}

/// Reads and checks a snapshot directory's metadata and files. A snapshot
/// may come from anywhere, so everything in it is checked before a worker
/// is given it: every file is opened relative to the directory, never
/// through a symlink, and must be a regular file; `meta.json` is at most
/// [`MAX_META_BYTES`]; its disks must be plain, distinct, read-only file
/// names; its vCPUs 1 to [`MAX_VCPUS`]; its memory at most this host's,
/// and the memory file as long as it says. Each refusal is a
/// [`SnapshotProblem`].
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let meta = supermachine::snapshot::read_meta(std::path::Path::new("/srv/snapshots/app"))?;
/// println!("workload {:?}, build key {:?}", meta.command, meta.key);
/// # Ok(()) }
/// ```
pub fn read_meta(dir: &Path) -> Result<SnapshotMeta, Error> {
    read_checked(dir).map_err(|reason| err(dir, reason))
}

fn read_checked(dir: &Path) -> Result<SnapshotMeta, SnapshotProblem> {
    // The directory the caller named is theirs: followed if a symlink.
    let dirfd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => SnapshotProblem::NotFound,
        e => io_problem("opening the snapshot directory")(e.into()),
    })?;
    let (file, size) = open_member(&dirfd, META_FILE).map_err(|e| match e {
        SnapshotProblem::Missing { .. } => SnapshotProblem::NoMeta,
        e => e,
    })?;
    if size > MAX_META_BYTES {
        return Err(SnapshotProblem::MetaTooLarge {
            size,
            cap: MAX_META_BYTES,
        });
    }
    let mut text = Vec::new();
    file.take(MAX_META_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io_problem("reading meta.json"))?;
    if text.len() as u64 > MAX_META_BYTES {
        return Err(SnapshotProblem::MetaTooLarge {
            size: text.len() as u64,
            cap: MAX_META_BYTES,
        });
    }
    // The format first: another version's metadata may not parse at all.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format =
        serde_json::from_slice(&text).map_err(|e| SnapshotProblem::BadMeta(e.to_string()))?;
    if format.format != META_FORMAT {
        return Err(SnapshotProblem::OtherFormat {
            found: format.format,
        });
    }
    let meta: SnapshotMeta =
        serde_json::from_slice(&text).map_err(|e| SnapshotProblem::BadMeta(e.to_string()))?;
    check_meta(&meta)?;
    open_member(&dirfd, "state")?;
    let (_, memory_size) = open_member(&dirfd, "memory")?;
    if memory_size != meta.memory_bytes {
        return Err(SnapshotProblem::MemorySize {
            expected: meta.memory_bytes,
            found: memory_size,
        });
    }
    for disk in &meta.disks {
        open_member(&dirfd, &disk.file)?;
    }
    match open_member(&dirfd, HOT_PAGES_FILE) {
        Ok(_) | Err(SnapshotProblem::Missing { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(meta)
}

/// What a new snapshot starts from: the running VM's description.
pub(crate) struct Source<'a> {
    pub control_socket: PathBuf,
    pub info: &'a crate::worker::runtime::VmInfo,
    pub defaults: &'a ExecDefaults,
    pub key: Option<String>,
    /// End the VM after the snapshot (a bake) instead of resuming it.
    pub stop_after: bool,
}

/// Snapshots the VM behind `source` into `dest`, which must not exist.
pub(crate) fn take(source: Source<'_>, dest: &Path) -> Result<SnapshotMeta, Error> {
    if dest.exists() {
        return Err(err(dest, SnapshotProblem::Exists));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| err(dest, SnapshotProblem::BadName))?
        .to_string_lossy()
        .into_owned();
    // Private: guest memory holds whatever secrets the guest had.
    paths::create_private_dir_all(&parent).map_err(|e| {
        err(
            dest,
            io_problem(format!("creating {}", parent.display()))(e),
        )
    })?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(paths::PRIVATE_DIR)
        .create(&staging)
        .map_err(|e| {
            err(
                dest,
                io_problem(format!("creating {}", staging.display()))(e),
            )
        })?;
    let result = assemble(&source, &staging).and_then(|meta| {
        std::fs::rename(&staging, dest).map_err(|e| {
            err(
                dest,
                io_problem("moving the finished snapshot into place")(e),
            )
        })?;
        sync_dir(&parent);
        Ok(meta)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn assemble(source: &Source<'_>, staging: &Path) -> Result<SnapshotMeta, Error> {
    let info = source.info;
    if info.disks.is_empty() {
        return Err(err(staging, SnapshotProblem::UnknownDisks));
    }
    let mut disks = Vec::with_capacity(info.disks.len());
    for (i, (path, read_only)) in info.disks.iter().enumerate() {
        if !read_only {
            return Err(err(
                staging,
                SnapshotProblem::VmDiskWritable { path: path.clone() },
            ));
        }
        let file = format!("disk{i}.img");
        link_or_copy(path, &staging.join(&file)).map_err(|e| {
            err(
                staging,
                io_problem(format!("adding disk {}", path.display()))(e),
            )
        })?;
        disks.push(SnapshotDisk {
            file,
            read_only: true,
        });
    }
    let report = request_snapshot(&source.control_socket, staging, source.stop_after)
        .map_err(|reason| err(staging, reason))?;
    let meta = SnapshotMeta {
        format: META_FORMAT,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        image: info.image.clone(),
        image_digest: info.image_digest.clone(),
        exposed_ports: info.exposed_ports.clone(),
        defaults: source.defaults.clone(),
        memory_mib: info.memory_mib,
        vcpus: info.vcpus,
        disks,
        key: source.key.clone(),
        command: info.command.clone(),
        memory_bytes: report.memory_bytes,
        memory_data_bytes: report.memory_data_bytes,
        mounts: info
            .mounts
            .iter()
            .map(|m| SnapshotMount {
                tag: m.tag.clone(),
                symlinks: m.symlinks,
                read_only: m.read_only,
            })
            .collect(),
        network: info.network.is_some(),
    };
    let meta_path = staging.join(META_FILE);
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| err(staging, SnapshotProblem::BadMeta(e.to_string())))?;
    write_synced(&meta_path, &json)
        .map_err(|e| err(staging, io_problem("writing meta.json")(e)))?;
    Ok(meta)
}

/// Asks the worker to write its state and memory into `dir`.
fn request_snapshot(
    socket: &Path,
    dir: &Path,
    stop_after: bool,
) -> Result<SnapshotReport, SnapshotProblem> {
    let mut stream = control::connect(socket)?;
    let dir = std::fs::canonicalize(dir).map_err(io_problem("resolving the staging directory"))?;
    let request = WorkerRequest::Snapshot { dir, stop_after };
    match control::ask(&mut stream, &request, SNAPSHOT_TIMEOUT, "snapshot")? {
        WorkerReply::Snapshotted(report) => Ok(report),
        other => Err(control::unexpected("snapshot", &other).into()),
    }
}

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        // Another filesystem, or one without hard links: a copy is correct,
        // only slower and bigger.
        Err(_) => std::fs::copy(from, to).map(|_| ()),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(paths::PRIVATE_FILE)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Every snapshot directory under `root` (non-recursive), with its
/// metadata, newest first. Unreadable entries are skipped.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let root = supermachine::default_snapshots_dir()?;
/// if let Some((newest, meta)) = supermachine::snapshot::list(&root).into_iter().next() {
///     println!("newest: {} from {}", newest.display(), meta.image);
/// }
/// # Ok(()) }
/// ```
pub fn list(root: &Path) -> Vec<(PathBuf, SnapshotMeta)> {
    let mut out: Vec<(PathBuf, SnapshotMeta)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let path = e.path();
            read_meta(&path).ok().map(|m| (path, m))
        })
        .collect();
    out.sort_by_key(|(_, meta)| std::cmp::Reverse(meta.created));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            format: META_FORMAT,
            created: 1,
            image: "builtin:busybox".into(),
            image_digest: None,
            exposed_ports: vec![],
            defaults: ExecDefaults::default(),
            memory_mib: 1,
            vcpus: 1,
            disks: vec![SnapshotDisk {
                file: "disk0.img".into(),
                read_only: true,
            }],
            key: None,
            command: vec![],
            memory_bytes: 4096,
            memory_data_bytes: 0,
            mounts: Vec::new(),
            network: false,
        }
    }

    /// A complete snapshot directory for `meta`.
    fn snapshot_dir(meta: &SnapshotMeta) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join(META_FILE), serde_json::to_vec(meta).unwrap()).unwrap();
        std::fs::write(p.join("state"), b"x").unwrap();
        std::fs::write(p.join("memory"), vec![0u8; meta.memory_bytes as usize]).unwrap();
        for disk in &meta.disks {
            let _ = std::fs::write(p.join(&disk.file), b"x");
        }
        dir
    }

    fn refusal(dir: &Path) -> SnapshotProblem {
        match read_meta(dir) {
            Err(Error::Snapshot { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_incomplete_snapshot_is_refused_with_the_missing_file() {
        let meta = meta();
        let dir = snapshot_dir(&meta);
        assert_eq!(read_meta(dir.path()).unwrap(), meta);
        std::fs::remove_file(dir.path().join("memory")).unwrap();
        let e = read_meta(dir.path()).unwrap_err().to_string();
        assert!(e.contains("memory is missing"), "{e}");
    }

    #[test]
    fn another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(META_FILE),
            br#"{"format": 99, "created": 0}"#,
        )
        .unwrap();
        let e = read_meta(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another version (format 99"), "{e}");
        assert!(matches!(
            refusal(&dir.path().join("nope")),
            SnapshotProblem::NotFound
        ));
    }

    /// Failed before the fix: members were checked with `is_file`, which
    /// follows symlinks, so a snapshot could point the worker anywhere.
    #[test]
    fn a_symlinked_member_is_refused() {
        let dir = snapshot_dir(&meta());
        std::fs::remove_file(dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("state")).unwrap();
        assert!(
            matches!(refusal(dir.path()), SnapshotProblem::NotRegular { file } if file == "state")
        );

        let dir = snapshot_dir(&meta());
        let real = dir.path().join("real.json");
        std::fs::rename(dir.path().join(META_FILE), &real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join(META_FILE)).unwrap();
        assert!(matches!(
            refusal(dir.path()),
            SnapshotProblem::NotRegular { .. }
        ));

        let dir = snapshot_dir(&meta());
        std::fs::remove_file(dir.path().join("disk0.img")).unwrap();
        std::fs::create_dir(dir.path().join("disk0.img")).unwrap();
        assert!(matches!(
            refusal(dir.path()),
            SnapshotProblem::NotRegular { .. }
        ));
    }

    /// Failed before the fix: meta.json was read whole, however large.
    #[test]
    fn an_oversized_meta_json_is_refused_unread() {
        let dir = snapshot_dir(&meta());
        let mut big = serde_json::to_vec(&meta()).unwrap();
        big.resize(MAX_META_BYTES as usize + 1, b' ');
        std::fs::write(dir.path().join(META_FILE), big).unwrap();
        assert!(matches!(
            refusal(dir.path()),
            SnapshotProblem::MetaTooLarge {
                cap: MAX_META_BYTES,
                ..
            }
        ));
    }

    /// Failed before the fix: any of these was accepted and handed to a
    /// worker (a writable disk would have had restored copies write into
    /// the snapshot's disk, which may be a hard link to the image cache).
    #[test]
    fn metadata_the_worker_would_refuse_or_that_writes_into_the_snapshot_is_refused() {
        type Case = (fn(&mut SnapshotMeta), fn(&SnapshotProblem) -> bool);
        let cases: Vec<Case> = vec![
            (
                |m| m.disks[0].read_only = false,
                |p| matches!(p, SnapshotProblem::WritableDisk { .. }),
            ),
            (
                |m| m.disks[0].file = "../../etc/shadow".into(),
                |p| matches!(p, SnapshotProblem::BadDiskName { .. }),
            ),
            (
                |m| m.disks[0].file = "memory".into(),
                |p| matches!(p, SnapshotProblem::BadDiskName { .. }),
            ),
            (
                |m| m.disks.push(m.disks[0].clone()),
                |p| matches!(p, SnapshotProblem::DuplicateDisk { .. }),
            ),
            (
                |m| m.disks.clear(),
                |p| matches!(p, SnapshotProblem::NoDisks),
            ),
            (
                |m| m.vcpus = 0,
                |p| matches!(p, SnapshotProblem::Vcpus { vcpus: 0, .. }),
            ),
            (
                |m| m.vcpus = MAX_VCPUS + 1,
                |p| matches!(p, SnapshotProblem::Vcpus { .. }),
            ),
            (
                |m| m.memory_mib = u64::MAX >> 20,
                |p| matches!(p, SnapshotProblem::Memory { .. }),
            ),
            (
                |m| m.memory_bytes = 8192,
                |p| {
                    matches!(
                        p,
                        SnapshotProblem::MemorySize {
                            expected: 8192,
                            found: 4096
                        }
                    )
                },
            ),
        ];
        for (i, (change, expected)) in cases.into_iter().enumerate() {
            let mut m = meta();
            let dir = snapshot_dir(&m);
            change(&mut m);
            std::fs::write(dir.path().join(META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
            let problem = refusal(dir.path());
            assert!(expected(&problem), "case {i}: {problem}");
        }
    }
}
