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
use serde::{Deserialize, Serialize};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supermachine_protocol::worker_control::{self, SnapshotReport, WorkerReply, WorkerRequest};

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
    pub file: String,
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
    pub format: u32,
    /// Seconds since the epoch.
    pub created: u64,
    /// The image the VM was started from (reference or path).
    pub image: String,
    pub image_digest: Option<String>,
    pub exposed_ports: Vec<String>,
    /// Env, working directory and user of every exec in a restored VM.
    pub defaults: ExecDefaults,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Root filesystem first.
    pub disks: Vec<SnapshotDisk>,
    /// The build key, for snapshots made by [`crate::Image::build`].
    pub key: Option<String>,
    /// The workload command started before the snapshot, if any.
    pub command: Vec<String>,
    pub memory_bytes: u64,
    /// Bytes of memory actually stored (the rest are holes).
    pub memory_data_bytes: u64,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Snapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads and checks a snapshot directory's metadata and files.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let meta = supermachine::snapshot::read_meta(std::path::Path::new("/srv/snapshots/app"))?;
/// println!("workload {:?}, build key {:?}", meta.command, meta.key);
/// # Ok(()) }
/// ```
pub fn read_meta(dir: &Path) -> Result<SnapshotMeta, Error> {
    let meta_path = dir.join(META_FILE);
    let text = std::fs::read(&meta_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if !dir.exists() => err(dir, "no such snapshot"),
        std::io::ErrorKind::NotFound => err(dir, "not a snapshot (no meta.json)"),
        _ => err(dir, format!("reading {}: {e}", meta_path.display())),
    })?;
    // The format first: another version's metadata may not parse at all.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format =
        serde_json::from_slice(&text).map_err(|e| err(dir, format!("meta.json: {e}")))?;
    if format.format != META_FORMAT {
        return Err(err(
            dir,
            format!(
                "made by another version (format {}, this one reads {META_FORMAT}): build it again",
                format.format
            ),
        ));
    }
    let meta: SnapshotMeta =
        serde_json::from_slice(&text).map_err(|e| err(dir, format!("meta.json: {e}")))?;
    for name in ["state", "memory"]
        .into_iter()
        .chain(meta.disks.iter().map(|d| d.file.as_str()))
    {
        if name.contains('/') || !dir.join(name).is_file() {
            return Err(err(
                dir,
                format!("{name} is missing: the snapshot is incomplete"),
            ));
        }
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
        return Err(err(dest, "already exists: choose a new path or remove it"));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| err(dest, "not a directory name"))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent)
        .map_err(|e| err(dest, format!("creating {}: {e}", parent.display())))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .map_err(|e| err(dest, format!("creating {}: {e}", staging.display())))?;
    let result = assemble(&source, &staging).and_then(|meta| {
        std::fs::rename(&staging, dest).map_err(|e| {
            err(
                dest,
                format!("moving the finished snapshot into place: {e}"),
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
        return Err(err(
            staging,
            "this VM's disks are unknown (started by an older supermachine): restart it",
        ));
    }
    let mut disks = Vec::with_capacity(info.disks.len());
    for (i, (path, read_only)) in info.disks.iter().enumerate() {
        if !read_only {
            return Err(err(
                staging,
                format!(
                    "{} is a writable disk: it would keep changing under the snapshot. \
                     Snapshot VMs with read-only disks only",
                    path.display()
                ),
            ));
        }
        let file = format!("disk{i}.img");
        link_or_copy(path, &staging.join(&file))
            .map_err(|e| err(staging, format!("adding disk {}: {e}", path.display())))?;
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
    };
    let meta_path = staging.join(META_FILE);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| err(staging, e))?;
    write_synced(&meta_path, &json).map_err(|e| err(staging, format!("writing meta.json: {e}")))?;
    Ok(meta)
}

/// Asks the worker to write its state and memory into `dir`.
fn request_snapshot(socket: &Path, dir: &Path, stop_after: bool) -> Result<SnapshotReport, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "connecting to the VM's control socket {}: {e}",
            socket.display()
        )
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    let request = WorkerRequest::Snapshot { dir, stop_after };
    match ask_worker(&mut stream, &request, SNAPSHOT_TIMEOUT, "snapshot")? {
        WorkerReply::Snapshotted(report) => Ok(report),
        other => Err(format!(
            "unexpected answer to a snapshot request: {other:?}"
        )),
    }
}

/// Sends `request` on a worker's control connection and waits up to
/// `timeout` for the reply; a `Failed` reply is the error. `what` names
/// the request in messages.
pub(crate) fn ask_worker(
    stream: &mut UnixStream,
    request: &WorkerRequest,
    timeout: Duration,
    what: &str,
) -> Result<WorkerReply, String> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    supermachine_protocol::write_frame(stream, request)
        .map_err(|e| format!("sending the {what} request: {e}"))?;
    match supermachine_protocol::read_frame::<WorkerReply, _>(stream) {
        Ok(WorkerReply::Failed(reason)) => Err(reason),
        Ok(reply) => Ok(reply),
        Err(e) => Err(format!("the worker did not answer the {what} request: {e}")),
    }
}

/// The control socket of the VM whose runtime directory is `vm_dir`.
pub(crate) fn control_socket(vm_dir: &Path) -> PathBuf {
    vm_dir.join(worker_control::SOCKET)
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
    let mut f = std::fs::File::create_new(path)?;
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

    #[test]
    fn an_incomplete_snapshot_is_refused_with_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta {
            format: META_FORMAT,
            created: 1,
            image: "builtin:busybox".into(),
            image_digest: None,
            exposed_ports: vec![],
            defaults: ExecDefaults::default(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![SnapshotDisk {
                file: "disk0.img".into(),
                read_only: true,
            }],
            key: None,
            command: vec![],
            memory_bytes: 0,
            memory_data_bytes: 0,
        };
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("state"), b"x").unwrap();
        let e = read_meta(dir.path()).unwrap_err().to_string();
        assert!(e.contains("memory is missing"), "{e}");
        std::fs::write(dir.path().join("memory"), b"x").unwrap();
        std::fs::write(dir.path().join("disk0.img"), b"x").unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), meta);
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
        assert!(read_meta(&dir.path().join("nope"))
            .unwrap_err()
            .to_string()
            .contains("no such snapshot"));
    }
}
